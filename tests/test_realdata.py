"""Conformance: every real published item in ``../shared/realdata/`` loads through its format reader and the task
adapter, for training (``load_data``) and for evaluation (``load_task_rows``); items whose images are present also
load with their images. Skips with a one-line reason where the folder is absent (a fresh clone).

Counts are the published ones (PROVENANCE.md of each folder). ``benchmarks/realdata_readers.py`` prints them.
"""

from __future__ import annotations

import json
import re
from argparse import Namespace
from pathlib import Path

import pytest
from PIL import Image

from pepo.data.loading import load_data
from pepo.data.readers import read_source
from pepo.data.readers.classification import read_class_names
from pepo.eval.tasks import TASKS, load_task_rows

from tests.realdata import REALDATA as REAL
from tests.realdata import raw_mathverse_options
pytestmark = pytest.mark.skipif(not REAL.is_dir(), reason=f"real benchmark files not present at {REAL}")


def _args(dataset, dataset_format="generic", **kw):
    values = dict(dataset=str(dataset), dataset_config=None, train_split="train", test_split="none",
                  image_column="image", question_column="question", answer_column="answer", image_root=None,
                  num_test=0, skip_invalid_rows=False, prompt_instruction="Think, then answer.",
                  dataset_format=dataset_format, box_convention="absolute_resized", min_pixels=3136,
                  max_pixels=12845056, k_shot=None, classification_show_options=False, options_column="options",
                  source_format="auto", class_names=None, box_format="xyxy")
    values.update(kw)
    return Namespace(**values)


def _train(dataset, dataset_format="generic", with_images=False, **kw):
    loaded = load_data(_args(dataset, dataset_format, **kw), with_images=with_images, log=None)
    return loaded, loaded.splits["train"]


def _prompts_ok(rows, with_images: bool) -> None:
    for row in rows:
        text = row["prompt"][0]["content"][0]["text"]
        assert text.strip() and "<image>" not in text, row["id"]
        if with_images:
            n_parts = sum(p["type"] == "image" for p in row["prompt"][0]["content"])
            assert n_parts == len(row["images"]) >= 1 and all(isinstance(i, Image.Image) for i in row["images"])


# ----------------------------------------------------------------------------------------------- Geometry3K


@pytest.mark.parametrize("split, n", [("train", 2101), ("val", 300), ("test", 601)])
def test_geometry3k_release_jsonl_every_item(split, n):
    path = REAL / "geometry3k" / "pepo_jsonl" / f"{split}.jsonl"
    loaded, rows = _train(path)
    assert loaded.source_format == "geometry3k_release" and len(rows) == n
    _prompts_ok(rows, with_images=False)
    assert rows[0]["prompt"][0]["content"][1] == {"type": "image", "text": None}
    # every value against the published lines, parsed here: id = the folder of the image, answer = solution,
    # the prompt = the user message without its <image> marker (and the run's instruction after it)
    raw = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows["id"] == [re.fullmatch(rf"Geometry3K/{split}/(\d+)/img_diagram\.png", r["images"][0]).group(1)
                          for r in raw]
    assert rows["answer"] == [r["solution"] for r in raw]
    for row, record in zip(rows, raw):
        text = row["prompt"][0]["content"][0]["text"]
        assert text == record["messages"][0]["content"].replace("<image>\n", "") + "\n\nThink, then answer."
    evaluated = load_task_rows(TASKS["geometry3k"], str(path), split, with_images=False, log=None)
    assert evaluated["answer"] == [r["solution"] for r in raw] and evaluated["id"] == rows["id"]


def test_geometry3k_release_folder_serves_the_recipe_splits():
    loaded = load_data(_args(REAL / "geometry3k" / "pepo_jsonl", test_split="validation"), with_images=False,
                       log=None)
    assert {k: len(v) for k, v in loaded.splits.items()} == {"train": 2101, "test": 300}
    assert set(loaded.splits["train"]["id"]).isdisjoint(loaded.splits["test"]["id"])


def test_geometry3k_items_with_images_in_both_layouts(tmp_path):
    """InterGPS train 11-20 (the 10 with images): answers are the lettered choices, equal to the release's."""
    intergps = REAL / "geometry3k" / "intergps_format"
    loaded, rows = _train(intergps, with_images=True)
    assert loaded.source_format == "intergps" and rows["id"] == [str(i) for i in range(11, 21)]
    _prompts_ok(rows, with_images=True)
    # the release JSONL rows of the same problems, their images found under an image root holding Geometry3K/
    (tmp_path / "Geometry3K").symlink_to(intergps)
    lines = (REAL / "geometry3k" / "pepo_jsonl" / "train.jsonl").read_text().splitlines()
    subset = [line for line in lines if re.search(r"Geometry3K/train/(1[1-9]|20)/", line)]
    (tmp_path / "train.jsonl").write_text("\n".join(subset) + "\n")
    _, release = _train(tmp_path / "train.jsonl", with_images=True, image_root=str(tmp_path))
    _prompts_ok(release, with_images=True)
    assert dict(zip(release["id"], release["answer"])) == dict(zip(rows["id"], rows["answer"]))
    evaluated = load_task_rows(TASKS["geometry3k"], str(intergps), "train", log=None)
    assert len(evaluated) == 10 and all(len(r["images"]) == 1 for r in evaluated)


# ----------------------------------------------------------------------------------------------- LogicVista


def test_logicvista_every_item():
    path = REAL / "logicvista" / "dataset.json"
    loaded, rows = _train(path)
    assert loaded.source_format == "logicvista" and len(rows) == 447  # 448 minus the empty v1_382
    assert "v1_382" in loaded.notes[0] and "v1_382" not in rows["id"]
    _prompts_ok(rows, with_images=False)
    raw = {k: v for k, v in json.loads(path.read_text()).items() if v["answer"].strip()}
    assert rows["id"] == list(raw) and rows["answer"] == [v["answer"] for v in raw.values()]
    assert all(row["prompt"][0]["content"][0]["text"].startswith(raw[row["id"]]["question"].strip()) for row in rows)
    task = TASKS["logicvista"]
    assert len(load_task_rows(task, str(path), "test", with_images=False, log=None)) == 443  # single letters
    assert len(load_task_rows(task, str(path), "test", with_images=False, all_items=True, log=None)) == 447


def test_logicvista_items_with_images(tmp_path):
    data = json.loads((REAL / "logicvista" / "dataset.json").read_text())
    images = REAL / "logicvista" / "images"
    present = {k: v for k, v in data.items() if (images / v["imagename"]).is_file()}
    assert len(present) == 60
    (tmp_path / "dataset.json").write_text(json.dumps(present))
    _, rows = _train(tmp_path / "dataset.json", with_images=True, image_root=str(images))
    assert len(rows) == 60 and rows["id"][:2] == ["v1_0", "v1_1"]
    _prompts_ok(rows, with_images=True)
    evaluated = load_task_rows(TASKS["logicvista"], str(tmp_path / "dataset.json"), "test", str(images),
                               all_items=True, log=None)
    assert len(evaluated) == 60


# ----------------------------------------------------------------------------------------------- PuzzleVQA


@pytest.mark.parametrize("name, n, n_images", [("puzzlevqa", 2000, 40), ("algopuzzlevqa", 1800, 36)])
def test_puzzles_every_item_and_those_with_images(name, n, n_images):
    data = REAL / name / "data"
    loaded, rows = _train(data, "multiple_choice")
    assert loaded.source_format == "puzzlevqa" and len(rows) == n and rows["id"] == [str(i) for i in range(n)]
    _prompts_ok(rows, with_images=False)
    assert all(row["choices"][ord(row["answer"]) - ord("A")] for row in rows)
    evaluated = load_task_rows(TASKS[name], str(data), "test", with_images=False, log=None)
    assert evaluated["answer"] == rows["answer"]
    sample = REAL / name / "sample_with_images.jsonl"
    _, with_images = _train(sample, "multiple_choice", with_images=True, image_root=str(data))
    assert len(with_images) == n_images
    _prompts_ok(with_images, with_images=True)
    assert len(load_task_rows(TASKS[name], str(sample), "test", str(data), log=None)) == n_images


# ----------------------------------------------------------------------------------------------- MathVista / MathVerse


def test_mathvista_testmini_every_item():
    path = REAL / "mathvista" / "testmini.json"
    loaded, rows = _train(path)
    assert loaded.source_format == "mathvista" and "query_testmini.json" in loaded.detail
    assert len(rows) == 1000 and rows["id"] == [str(i) for i in range(1, 1001)]
    _prompts_ok(rows, with_images=False)
    raw = json.loads(path.read_text())
    queries = json.loads((REAL / "mathvista" / "query_testmini.json").read_text())
    assert rows["answer"] == [raw[i]["answer"] for i in rows["id"]]
    assert rows["choices"] == [raw[i]["choices"] for i in rows["id"]]
    assert rows["answer_type"] == [raw[i]["answer_type"] for i in rows["id"]]
    assert all(r["prompt"][0]["content"][0]["text"].startswith(queries[r["id"]]) for r in rows)
    mc = [r for r in rows if r["question_type"] == "multi_choice"]
    assert len(mc) == 540 and all(r["answer"] in r["choices"] for r in mc)
    assert all("(A)" in r["prompt"][0]["content"][0]["text"] for r in mc)
    assert all(r["prompt"][0]["content"][0]["text"].startswith("Hint: ") for r in rows)  # the official queries
    evaluated = load_task_rows(TASKS["mathvista"], str(path), "testmini", with_images=False, log=None)
    assert len(evaluated) == 1000


def test_mathverse_text_only_every_item_and_the_full_format_template():
    path = REAL / "mathverse" / "testmini_text_only.json"
    loaded, rows = _train(path)
    assert loaded.source_format == "mathverse" and len(rows) == 788 and len(set(rows["id"])) == 788
    _prompts_ok(rows, with_images=False)
    assert {"(C)", "A\nC", "False", "090^\\circ T"} <= set(rows["answer"])
    raw = json.loads(path.read_text())
    assert rows["id"] == [r["sample_index"] for r in raw] and rows["answer"] == [r["answer"] for r in raw]
    assert rows["question_type"] == [r["question_type"] for r in raw]
    # the options reach the scorer: those written in the published question, read here without pepo's parser
    assert rows["choices"] == [raw_mathverse_options(r["question"]) or None for r in raw]
    gold_text = next(r for r in rows if r["answer"] == "090^\\circ T")
    assert gold_text["choices"] == ["090^\\circ T", "180^\\circ T", "049^\\circ T", "041^\\circ T"]
    task = TASKS["mathverse"]
    assert len(load_task_rows(task, str(path), "testmini", with_images=False, log=None)) == 436
    assert len(load_task_rows(task, str(path), "testmini", with_images=False, all_items=True, log=None)) == 788
    _, template = _train(REAL / "mathverse" / "output_testmini_template.json")
    assert template["id"] == ["3421", "3422", "3423", "3424", "3425"]  # Vision Only's question is in the image
    _prompts_ok(template, with_images=False)


# ----------------------------------------------------------------------------------------------- RefCOCO


def test_refcoco_repackaged_sample_boxes_in_coco_xywh():
    kw = dict(image_column="image_file", question_column="sent", answer_column="gt_box_xywh", box_format="xywh",
              box_convention="absolute_original")
    loaded, rows = _train(REAL / "refcoco" / "refs_gt_only.jsonl", "grounding", **kw)
    assert loaded.source_format == "table" and len(rows) == 50
    raw = [json.loads(line) for line in (REAL / "refcoco" / "refs_gt_only.jsonl").read_text().splitlines()]
    for row, item in zip(rows, raw):
        x, y, w, h = item["gt_box_xywh"]
        assert json.loads(row["answer"]) == pytest.approx([x, y, x + w, y + h])
    original = read_source(str(REAL / "refcoco" / "testA_refcoco_unc_dets.json")).splits["all"]
    assert original["gt_box"] == [item["gt_box_xywh"] for item in raw] and original["sent"] == [item["sent"] for item in raw]


# ----------------------------------------------------------------------------------------------- classification


def test_fgvc_aircraft_real_variant_names_through_the_official_layout(tmp_path):
    classes = read_class_names(REAL / "fgvc_aircraft" / "clip_classnames_templates.json")
    assert len(classes) == 100
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "variants.txt").write_text("\n".join(classes) + "\n")
    (data / "images_variant_test.txt").write_text("".join(f"{1000000 + i} {c}\n" for i, c in enumerate(classes)))
    for i in range(len(classes)):
        Image.new("RGB", (8, 8)).save(data / "images" / f"{1000000 + i}.jpg")
    rows = load_task_rows(TASKS["fgvc_aircraft"], str(tmp_path), "test", log=None)
    assert rows["answer"] == classes  # names with spaces and slashes ("Boeing 717", "F/A-18") survive the split


def test_flowers102_real_names_through_the_official_layout(tmp_path):
    import numpy as np
    from scipy.io import savemat

    clip = REAL / "flowers102" / "clip_classnames_templates.json"
    classes = read_class_names(clip)
    assert len(classes) == 102
    savemat(tmp_path / "imagelabels.mat", {"labels": np.arange(1, 103, dtype=np.uint8)[None, :]})
    numbers = np.arange(1, 103, dtype=np.uint16)[None, :]
    savemat(tmp_path / "setid.mat", {"trnid": numbers, "valid": numbers[:, :1], "tstid": numbers})
    (tmp_path / "jpg").mkdir()
    for n in range(1, 103):
        Image.new("RGB", (8, 8)).save(tmp_path / "jpg" / f"image_{n:05d}.jpg")
    rows = load_task_rows(TASKS["flower102"], str(tmp_path), "test", class_names=str(clip), log=None)
    assert rows["answer"] == classes and rows["id"][0] == "00001"
