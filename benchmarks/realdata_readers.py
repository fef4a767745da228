"""How many real published items load and build prompts, per task: ``python -m benchmarks.realdata_readers``.

Reads ``../shared/realdata/`` (or ``--root``) with the format readers and the task adapters, as ``pepo train``
(every item, prompts built without opening images) and ``pepo eval`` (the task's default subset and
``--all_items``) do, and again with images for the items whose images are present. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from argparse import Namespace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent / "shared" / "realdata"


def _args(dataset: Path, dataset_format: str = "generic", **kw) -> Namespace:
    values = dict(dataset=str(dataset), dataset_config=None, train_split="train", test_split="none",
                  image_column="image", question_column="question", answer_column="answer", image_root=None,
                  num_test=0, skip_invalid_rows=False, prompt_instruction=None, dataset_format=dataset_format,
                  box_convention="absolute_original", min_pixels=3136, max_pixels=12845056, k_shot=None,
                  classification_show_options=False, options_column="options", source_format="auto",
                  class_names=None, box_format="xyxy")
    values.update(kw)
    return Namespace(**values)


def measure(root: Path) -> list[dict]:
    """One dict per (task, file): published items, rows built for training, eval rows (default / all items),
    and rows built with their images where present."""
    from pepo.data.loading import load_data
    from pepo.eval.tasks import TASKS, customize_task, load_task_rows

    def train_rows(path, fmt="generic", with_images=False, **kw):
        return len(load_data(_args(path, fmt, **kw), with_images=with_images, log=None).splits["train"])

    def eval_rows(task, path, split, **kw):
        try:
            return len(load_task_rows(TASKS[task], str(path), split, with_images=False, log=None, **kw))
        except ValueError as err:  # no item in the task's default subset
            if "default subset" not in str(err):
                raise
            return 0

    out = []
    tmp = Path(tempfile.mkdtemp(prefix="realdata_"))
    for split in ("train", "val", "test"):
        path = root / "geometry3k" / "pepo_jsonl" / f"{split}.jsonl"
        n = sum(1 for line in path.read_text().splitlines() if line.strip())
        out.append({"task": "geometry3k", "file": f"pepo_jsonl/{split}.jsonl", "items": n,
                    "train": train_rows(path), "eval": eval_rows("geometry3k", path, split),
                    "eval_all": eval_rows("geometry3k", path, split, all_items=True), "images": "-"})
    intergps = root / "geometry3k" / "intergps_format"
    out.append({"task": "geometry3k", "file": "intergps_format/", "items": len(list(intergps.glob("*/*/data.json"))),
                "train": train_rows(intergps), "eval": eval_rows("geometry3k", intergps, "train"),
                "eval_all": eval_rows("geometry3k", intergps, "train", all_items=True),
                "images": f"{train_rows(intergps, with_images=True)}/10"})
    path = root / "logicvista" / "dataset.json"
    data = json.loads(path.read_text())
    present = {k: v for k, v in data.items() if (root / "logicvista" / "images" / v["imagename"]).is_file()}
    (tmp / "dataset.json").write_text(json.dumps(present))
    out.append({"task": "logicvista", "file": "dataset.json", "items": len(data), "train": train_rows(path),
                "eval": eval_rows("logicvista", path, "test"),
                "eval_all": eval_rows("logicvista", path, "test", all_items=True),
                "images": f"{train_rows(tmp / 'dataset.json', with_images=True, image_root=str(path.parent / 'images'))}"
                          f"/{len(present)}"})
    for name in ("puzzlevqa", "algopuzzlevqa"):
        folder = root / name / "data"
        n = sum(len(f.read_text().splitlines()) for f in folder.glob("*.json"))
        sample = root / name / "sample_with_images.jsonl"
        n_sample = len(sample.read_text().splitlines())
        out.append({"task": name, "file": "data/ (folder)", "items": n, "train": train_rows(folder, "multiple_choice"),
                    "eval": eval_rows(name, folder, "test"), "eval_all": eval_rows(name, folder, "test", all_items=True),
                    "images": f"{train_rows(sample, 'multiple_choice', with_images=True, image_root=str(folder))}"
                              f"/{n_sample}"})
    path = root / "mathvista" / "testmini.json"
    out.append({"task": "mathvista", "file": "testmini.json", "items": len(json.loads(path.read_text())),
                "train": train_rows(path), "eval": eval_rows("mathvista", path, "testmini"),
                "eval_all": eval_rows("mathvista", path, "testmini", all_items=True), "images": "0 present"})
    for file in ("testmini_text_only.json", "output_testmini_template.json"):
        path = root / "mathverse" / file
        out.append({"task": "mathverse", "file": file, "items": len(json.loads(path.read_text())),
                    "train": train_rows(path), "eval": eval_rows("mathverse", path, "testmini"),
                    "eval_all": eval_rows("mathverse", path, "testmini", all_items=True), "images": "0 present"})
    path = root / "refcoco" / "refs_gt_only.jsonl"
    kw = dict(image_column="image_file", question_column="sent", answer_column="gt_box_xywh", box_format="xywh")
    out.append({"task": "refcoco", "file": "refs_gt_only.jsonl (--box_format xywh)",
                "items": len(path.read_text().splitlines()), "train": train_rows(path, "grounding", **kw),
                "eval": len(load_task_rows(customize_task(TASKS["refcoco"], "image_file", "sent", "gt_box_xywh"),
                                           str(path), "test", box_format="xywh", with_images=False, log=None)),
                "eval_all": "-", "images": "0 present"})
    for name, task in (("fgvc_aircraft", "fgvc_aircraft"), ("flowers102", "flower102")):
        names_file = root / name / "clip_classnames_templates.json"
        classes = json.loads(names_file.read_text())["classes"]
        layout = _official_layout(tmp / name, name, classes)  # one drawn image per real class name
        kw = {"class_names": str(names_file)} if name == "flowers102" else {}
        built = len(load_data(_args(layout, "classification", train_split="test", **kw), log=None).splits["train"])
        out.append({"task": task, "file": "class list, in a drawn official layout", "items": len(classes),
                    "train": built, "eval": eval_rows(task, layout, "test", **kw), "eval_all": "-",
                    "images": f"{built} drawn"})
    return out


def _official_layout(folder: Path, name: str, classes: list[str]) -> Path:
    """FGVC-Aircraft's ``data/`` or Flowers102's folder with one small drawn image per class (test split)."""
    from PIL import Image

    folder.mkdir(parents=True)
    if name == "fgvc_aircraft":
        (folder / "images").mkdir()
        (folder / "variants.txt").write_text("\n".join(classes) + "\n")
        (folder / "images_variant_test.txt").write_text("".join(f"{1000000 + i} {c}\n" for i, c in enumerate(classes)))
        for i in range(len(classes)):
            Image.new("RGB", (8, 8)).save(folder / "images" / f"{1000000 + i}.jpg")
        return folder
    import numpy as np
    from scipy.io import savemat

    n = len(classes)
    savemat(folder / "imagelabels.mat", {"labels": np.arange(1, n + 1, dtype=np.uint8)[None, :]})
    ids = np.arange(1, n + 1, dtype=np.uint16)[None, :]
    savemat(folder / "setid.mat", {"trnid": ids, "valid": ids[:, :1], "tstid": ids})
    (folder / "jpg").mkdir()
    for i in range(1, n + 1):
        Image.new("RGB", (8, 8)).save(folder / "jpg" / f"image_{i:05d}.jpg")
    return folder
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(ROOT), help="the realdata folder (default ../shared/realdata)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    rows = measure(Path(args.root))
    print("| task | file | published items | rows built (train) | eval rows (default subset) | eval rows "
          "(--all_items) | with images (built/present) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['task']} | {r['file']} | {r['items']} | {r['train']} | {r['eval']} | {r['eval_all']} | "
              f"{r['images']} |")
    print(f"\n{time.perf_counter() - start:.0f} s")
    return rows


if __name__ == "__main__":
    main()
