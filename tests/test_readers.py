"""Format readers on tiny hand-written files in exactly the published schemas (images drawn with PIL).

Each fixture copies the field names, nesting and value types of the real file (see
``../shared/realdata/*/PROVENANCE.md``); the values are made up. ``test_realdata.py`` runs the same readers on the
real files where that folder exists.
"""

from __future__ import annotations

import ast
import json
import pickle
from argparse import Namespace
from pathlib import Path

import pytest
from PIL import Image

from pepo.data.errors import DataError
from pepo.data.loading import load_data
from pepo.data.readers import detect_format

SRC = Path(__file__).resolve().parent.parent / "src" / "pepo" / "data"


def _args(dataset, **kw):
    values = dict(dataset=str(dataset), dataset_config=None, train_split="test", test_split="none",
                  image_column="image", question_column="question", answer_column="answer", image_root=None,
                  num_test=0, skip_invalid_rows=False, prompt_instruction=None, dataset_format="generic",
                  box_convention="absolute_original", min_pixels=3136, max_pixels=12845056, k_shot=None,
                  classification_show_options=False, options_column="options", source_format="auto",
                  class_names=None, box_format="xyxy")
    values.update(kw)
    return Namespace(**values)


def _png(path: Path, size=(64, 48), colour=(255, 255, 255)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def _text(row) -> str:
    return row["prompt"][0]["content"][0]["text"]


# ----------------------------------------------------------------------------------------------- fixtures


def intergps(root: Path) -> Path:
    """InterGPS: <split>/<id>/data.json (answer = a letter naming one of `choices`) + img_diagram.png."""
    for split, pid, text, choices, letter in (
        ("train", 11, "In \\odot X, A B = 30. Find m \\widehat A B.", ["30", "40", "60", "80"], "D"),
        ("train", 12, "Find x.", ["3", "\\sqrt { 7 }", "9", "12"], "B"),
        ("test", 2401, "Find the area of the figure.", ["24", "48", "60", "96"], "C"),
    ):
        folder = root / split / str(pid)
        _png(folder / "img_diagram.png")
        (folder / "data.json").write_text(json.dumps({
            "problem_text": text, "choices": choices, "answer": letter, "detailed_solution": " ",
            "problem_type_graph": ["Circle"], "problem_type_goal": ["Angle"], "source": "textbook", "comment": "",
            "id": pid, "annot_id": "x", "is_standard": False, "compact_choices": choices,
            "precise_value": [1.0, 2.0, 3.0, 4.0], "rough_value": [1, 2, 3, 4], "compact_text": text,
            "annotat_text": f"${text}$", "unit": "", "img_width": 64, "img_height": 48, "data_type": split,
            "date": "Fri Sep 18 22:23:14 2020", "system": "linux"}, indent=1))
    return root


def logicvista(root: Path) -> Path:
    """LogicVista data/: dataset.json keyed by id (imagename under images/), one empty item as published."""
    items = {
        "v1_0": ("What choice (A, B, C, or D) should be in place of the question mark?", "C"),
        "v1_1": ("Which choices in the image (A-D) belong to the green category?", "A, C"),
        "v1_2": ("Which is the correct answer according to the image? Select from 1-5", "3"),
        "v1_3": ("", ""),
    }
    data = {}
    for key, (question, answer) in items.items():
        _png(root / "images" / f"{key}.png")
        data[key] = {"imagename": f"{key}.png", "question": question, "answer": answer, "reasoning": "because",
                     "skill": ["inductive"], "broad_capability": ["diagram"],
                     "specific_capability": ["sequence pattern"], "imagesource": "aptitudetests",
                     "sourcelink": "https://example.org", "liscenced": "false"}
    (root / "dataset.json").write_text(json.dumps(data, indent=1))
    return root / "dataset.json"


def puzzles(root: Path) -> Path:
    """PuzzleVQA data/: per-category JSON Lines files named .json; options ints with a str answer, and the reverse."""
    lines = {
        "venn.json": [{"image": "images/venn/venn_0000.png", "question": "What is the missing number?", "answer": 1,
                       "options": ["4", "8", "1", "9"], "caption": "c", "explanation": "e", "deduction": "d"}],
        "circle_size_number.json": [
            {"image": "images/circle_size_number/circle_size_number_0000.png", "question": "Missing number?",
             "options": [6, 3, 4, 2], "answer": "4", "caption": "c", "explanation": "e", "deduction": "d"},
            {"image": "images/circle_size_number/circle_size_number_0001.png", "question": "Missing number?",
             "options": [1, 2, 5, 7], "answer": "7", "caption": "c", "explanation": "e", "deduction": "d"}],
    }
    for name, rows in lines.items():
        for row in rows:
            _png(root / row["image"])
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def mathvista(root: Path, with_queries: bool = True) -> Path:
    """MathVista data/: testmini.json keyed by pid (+ query_testmini.json with the official prompts)."""
    meta = {"split": "testmini", "language": "english", "img_width": 64, "img_height": 48, "source": "Geometry3K",
            "category": "math-targeted-vqa", "task": "geometry problem solving", "context": "geometry diagram",
            "grade": "high school", "skills": ["geometry reasoning"]}
    data = {
        "1": {"question": "How much work?", "image": "images/1.jpg", "choices": None, "unit": None, "precision": 1,
              "answer": "1.2", "question_type": "free_form", "answer_type": "float", "pid": "1", "metadata": meta},
        "5": {"question": "Find $m\\angle H$", "image": "images/5.jpg", "choices": ["97", "102", "107", "122"],
              "unit": None, "precision": None, "answer": "97", "question_type": "multi_choice",
              "answer_type": "text", "pid": "5", "metadata": meta},
    }
    for pid in data:
        (root / "images").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (64, 48)).save(root / "images" / f"{pid}.jpg")
    (root / "testmini.json").write_text(json.dumps(data, indent=1))
    if with_queries:
        (root / "query_testmini.json").write_text(json.dumps({
            "1": "Hint: Please answer the question requiring a floating-point number with one decimal place.\n"
                 "Question: How much work?",
            "5": "Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, at the "
                 "end.\nQuestion: Find $m\\angle H$\nChoices:\n(A) 97\n(B) 102\n(C) 107\n(D) 122"}, indent=1))
    return root / "testmini.json"


def mathverse(root: Path) -> Path:
    """MathVerse testmini.json: a list; choices inside the question; irregular answers; Vision Only = no question."""
    meta = {"split": "testmini", "source": "GeoQA", "subject": "Plane Geometry", "subfield": "Angle"}
    items = [
        ("1", "1", "Text Dominant", "Find angle CED.\nChoices:\nA:40°\nB:60°\nC:120°\nD:140°", "(C)", "multi-choice"),
        ("2", "1", "Vision Only", "", "A\nC", "multi-choice"),
        ("3", "2", "Text Lite", "Find L.", "090^\\circ T", "free-form"),
    ]
    rows = []
    for sample, problem, version, question, answer, qtype in items:
        image = f"images_version_1-4/image_{sample}.png"
        _png(root / image)
        rows.append({"sample_index": sample, "problem_index": problem, "problem_version": version,
                     "question": question, "image": image, "answer": answer, "question_type": qtype,
                     "metadata": meta, "query_wo": "According to the question shown in the image, please directly "
                     "answer the question.", "query_cot": "Please first conduct reasoning."})
    (root / "testmini.json").write_text(json.dumps(rows, indent=1))
    return root / "testmini.json"


def refcoco(root: Path) -> Path:
    """refer toolkit: refs(unc).p (a pickle of plain dicts) + instances.json (COCO, bbox = [x, y, w, h])."""
    root.mkdir(parents=True, exist_ok=True)
    refs = [
        {"ref_id": 0, "ann_id": 101, "image_id": 7, "split": "train", "category_id": 1, "file_name":
         "COCO_train2014_000000000007_101.jpg", "sent_ids": [0, 1], "sentences": [
             {"raw": "Person in red", "sent": "person in red", "tokens": ["person", "in", "red"], "sent_id": 0},
             {"raw": "left guy", "sent": "left guy", "tokens": ["left", "guy"], "sent_id": 1}]},
        {"ref_id": 1, "ann_id": 102, "image_id": 7, "split": "testA", "category_id": 1, "file_name":
         "COCO_train2014_000000000007_102.jpg", "sent_ids": [2],
         "sentences": [{"raw": "right", "sent": "right", "tokens": ["right"], "sent_id": 2}]},
    ]
    with open(root / "refs(unc).p", "wb") as f:
        pickle.dump(refs, f, protocol=2)
    (root / "instances.json").write_text(json.dumps({
        "images": [{"id": 7, "file_name": "COCO_train2014_000000000007.jpg", "width": 64, "height": 48}],
        "annotations": [{"id": 101, "image_id": 7, "bbox": [0.0, 5.5, 20.0, 30.0], "category_id": 1},
                        {"id": 102, "image_id": 7, "bbox": [30.0, 0.0, 34.0, 48.0], "category_id": 1}],
        "categories": [{"id": 1, "name": "person", "supercategory": "person"}]}))
    _png(root / "images" / "COCO_train2014_000000000007.jpg", (64, 48))
    return root


def fgvc(root: Path) -> Path:
    """fgvc-aircraft-2013b/data: images_variant_<split>.txt ('<id> <variant>'), variants.txt, images/<id>.jpg."""
    data = root / "fgvc-aircraft-2013b" / "data"
    (data / "images").mkdir(parents=True)
    (data / "variants.txt").write_text("707-320\nBoeing 717\nF/A-18\n")
    (data / "images_variant_train.txt").write_text("1025794 707-320\n1340192 F/A-18\n0056978 Boeing 717\n")
    (data / "images_variant_test.txt").write_text("1514522 Boeing 717\n")
    for i in ("1025794", "1340192", "0056978", "1514522"):
        Image.new("RGB", (64, 68)).save(data / "images" / f"{i}.jpg")
    return root


def flowers(root: Path, names: bool = True) -> Path:
    """Flowers102: imagelabels.mat (labels 1-based), setid.mat (trnid / valid / tstid, 1-based), jpg/."""
    import numpy as np
    from scipy.io import savemat

    root.mkdir(parents=True, exist_ok=True)
    savemat(root / "imagelabels.mat", {"labels": np.array([[1, 3, 2, 3]], dtype=np.uint8)})
    savemat(root / "setid.mat", {"trnid": np.array([[1, 2]], dtype=np.uint16), "valid": np.array([[3]], dtype=np.uint16),
                                 "tstid": np.array([[4]], dtype=np.uint16)})
    for n in range(1, 5):
        _png(root / "jpg" / f"image_{n:05d}.jpg")
    if names:
        (root / "classnames.txt").write_text("pink primrose\nhard-leaved pocket orchid\ncolt's foot\n")
    return root


# ----------------------------------------------------------------------------------------------- readers


def test_geometry3k_release_jsonl_ids_are_problem_ids(tmp_path):
    rows = [{"images": [f"Geometry3K/test/{pid}/img_diagram.png"], "solution": answer,
             "messages": [{"role": "user", "content": f"<image>\nFind x {pid}.\n\nThink."}]}
            for pid, answer in ((2401, "60"), (2402, "2 \\sqrt { 11 }"))]
    for row in rows:
        _png(tmp_path / row["images"][0])
    path = tmp_path / "test.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    assert detect_format(str(path))[0] == "geometry3k_release"
    loaded = load_data(_args(path), log=None)
    rows = loaded.splits["train"]
    assert rows["id"] == ["2401", "2402"] and rows["answer"] == ["60", "2 \\sqrt { 11 }"]
    assert _text(rows[0]) == "Find x 2401.\n\nThink." and rows[0]["images"][0].size == (64, 48)


def test_geometry3k_release_folder_has_a_split_per_file_and_val_answers_validation(tmp_path):
    for split, pid in (("train", 11), ("val", 2101), ("test", 2401)):
        rel = f"Geometry3K/{split}/{pid}/img_diagram.png"
        _png(tmp_path / "raw" / rel)
        (tmp_path / "geometry3k").mkdir(exist_ok=True)
        (tmp_path / "geometry3k" / f"{split}.jsonl").write_text(json.dumps({
            "images": [rel], "messages": [{"role": "user", "content": "<image>\nFind x."}], "solution": "5"}) + "\n")
    assert detect_format(str(tmp_path / "geometry3k")) == ("geometry3k_release", "a folder of 3 split files")
    notes = []
    loaded = load_data(_args(tmp_path / "geometry3k", train_split="train", test_split="validation",
                             image_root=str(tmp_path / "raw")), log=notes.append)
    assert loaded.splits["train"]["id"] == ["11"] and loaded.splits["test"]["id"] == ["2101"]
    assert any("split 'validation' is called 'val'" in n for n in notes)
    assert loaded.splits["test"][0]["images"][0].size == (64, 48)


def test_intergps_folders_answer_is_the_choice_the_letter_names(tmp_path):
    root = intergps(tmp_path / "geometry3k")
    assert detect_format(str(root))[0] == "intergps"
    loaded = load_data(_args(root, train_split="train", test_split="test"), log=None)
    train, test = loaded.splits["train"], loaded.splits["test"]
    assert train["id"] == ["11", "12"] and train["answer"] == ["80", "\\sqrt { 7 }"]
    assert test["id"] == ["2401"] and test["answer"] == ["60"] and test[0]["choices"] == ["24", "48", "60", "96"]
    assert _text(train[0]) == "In \\odot X, A B = 30. Find m \\widehat A B."
    with pytest.raises(DataError, match=r"split 'val' not found; available: \['test', 'train'\]"):
        load_data(_args(root, train_split="val"), log=None)
    data = json.loads((root / "test" / "2401" / "data.json").read_text())
    (root / "test" / "2401" / "data.json").write_text(json.dumps({**data, "answer": "E"}))
    with pytest.raises(DataError, match=r"test/2401/data.json, field 'answer': 'E' is not among the options"):
        load_data(_args(root, train_split="test"), log=None)


def test_hf_geometry3k_columns_are_a_table(tmp_path):
    from datasets import Dataset, Features, Image as ImageFeature, Sequence, Value

    features = Features({"images": Sequence(ImageFeature()), "problem": Value("string"), "answer": Value("string")})
    Dataset.from_dict({"images": [[Image.new("RGB", (32, 32))]] * 2, "problem": ["<image>Find x.", "<image>Find y."],
                       "answer": ["3", "\\frac { 3 } { 7 }"]}, features=features).to_parquet(tmp_path / "test.parquet")
    loaded = load_data(_args(tmp_path / "test.parquet", image_column="images", question_column="problem"), log=None)
    assert loaded.source_format == "table" and "hiyouga/geometry3k columns" in loaded.detail
    assert loaded.splits["train"]["id"] == ["0", "1"] and _text(loaded.splits["train"][1]) == "Find y."


def test_logicvista_keyed_json_ids_images_and_the_empty_item(tmp_path):
    path = logicvista(tmp_path / "data")
    notes = []
    loaded = load_data(_args(path), log=notes.append)
    rows = loaded.splits["train"]
    assert loaded.source_format == "logicvista"
    assert rows["id"] == ["v1_0", "v1_1", "v1_2"] and rows["answer"] == ["C", "A, C", "3"]
    assert rows[0]["images"][0].size == (64, 48) and rows[0]["skill"] == ["inductive"]
    assert any("skipped 1 empty item(s)" in n and "v1_3" in n for n in notes)
    assert any("logicvista" in n for n in notes)  # the detected format is printed
    (tmp_path / "data" / "images" / "v1_1.png").unlink()
    with pytest.raises(DataError, match=r"dataset.json id v1_1, row 1 \(id v1_1\), field 'imagename'.*v1_1.png does "
                                        r"not exist"):
        load_data(_args(path), log=None)


def test_logicvista_as_a_table_with_image_question_answer_columns(tmp_path):
    _png(tmp_path / "a.png")
    path = tmp_path / "logicvista.jsonl"
    path.write_text(json.dumps({"id": "v1_0", "image": "a.png", "question": "Which?", "answer": "B"}) + "\n")
    loaded = load_data(_args(path), log=None)
    assert loaded.source_format == "table" and loaded.splits["train"]["id"] == ["v1_0"]


def test_puzzle_folder_is_one_dataset_in_sorted_file_order(tmp_path):
    root = puzzles(tmp_path / "data")
    assert detect_format(str(root)) == ("puzzlevqa", "a folder of 2 per-category files")
    notes = []
    loaded = load_data(_args(root), log=notes.append)  # generic is upgraded to multiple_choice, with a note
    rows = loaded.splits["train"]
    assert loaded.dataset_format == "multiple_choice" and any("multiple_choice adapter" in n for n in notes)
    # circle_size_number.json sorts before venn.json; ids count rows across the files
    assert rows["id"] == ["0", "1", "2"] and rows["category"] == ["circle_size_number"] * 2 + ["venn"]
    assert rows["answer"] == ["C", "D", "C"] and rows["choices"][0] == ["6", "3", "4", "2"]
    assert "(C) 4" in _text(rows[0])
    single = load_data(_args(root / "venn.json"), log=None).splits["train"]
    assert single["answer"] == ["C"] and single[0]["images"][0].size == (64, 48)


def test_mathvista_testmini_ids_are_pids_and_prompts_the_official_queries(tmp_path):
    path = mathvista(tmp_path / "data")
    rows = load_data(_args(path), log=None).splits["train"]
    assert rows["id"] == ["1", "5"] and rows["answer"] == ["1.2", "97"]
    assert _text(rows[0]).startswith("Hint: Please answer the question requiring a floating-point number")
    assert _text(rows[1]).endswith("Choices:\n(A) 97\n(B) 102\n(C) 107\n(D) 122")
    assert rows[1]["choices"] == ["97", "102", "107", "122"] and rows[0]["choices"] is None
    assert rows[0]["precision"] == 1.0 and rows[1]["question_type"] == "multi_choice"
    path = mathvista(tmp_path / "bare", with_queries=False)
    loaded = load_data(_args(path), log=None)
    assert "no query.json found" in loaded.detail
    assert _text(loaded.splits["train"][1]) == "Find $m\\angle H$\nChoices:\n(A) 97\n(B) 102\n(C) 107\n(D) 122"


def test_mathverse_list_ids_are_sample_indexes_and_answers_stay_as_published(tmp_path):
    path = mathverse(tmp_path)
    rows = load_data(_args(path), log=None).splits["train"]
    assert rows["id"] == ["1", "2", "3"] and rows["answer"] == ["(C)", "A\nC", "090^\\circ T"]
    assert rows["question_type"] == ["multi-choice", "multi-choice", "free-form"]
    assert _text(rows[1]).startswith("According to the question shown in the image")  # Vision Only


def test_refcoco_refs_pickle_and_instances(tmp_path):
    root = refcoco(tmp_path / "refcoco")
    assert detect_format(str(root))[0] == "refcoco"
    loaded = load_data(_args(root, train_split="train", test_split="testA", image_root=str(root / "images")),
                       log=None)
    train, test = loaded.splits["train"], loaded.splits["testA" if False else "test"]
    assert loaded.dataset_format == "grounding"
    assert train["id"] == ["0", "1"] and json.loads(train[0]["answer"]) == [0.0, 5.5, 20.0, 35.5]  # xywh -> xyxy
    assert json.loads(test[0]["answer"]) == [30.0, 0.0, 64.0, 48.0] and '"right"' in _text(test[0])


def test_refcoco_pickle_that_would_run_code_is_refused(tmp_path):
    root = refcoco(tmp_path / "refcoco")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (root / "refs(unc).p").write_bytes(pickle.dumps([Evil()]))
    with pytest.raises(DataError, match=r"refs\(unc\).p: could not be read.*refuses to load builtins.print"):
        load_data(_args(root, train_split="train"), log=None)


@pytest.mark.parametrize("box_format, box", [("xywh", [10, 5, 20, 30]), ("xyxy", [10, 5, 30, 35])])
def test_grounding_table_boxes_in_either_convention(tmp_path, box_format, box):
    _png(tmp_path / "a.png", (64, 48))
    path = tmp_path / "refs.jsonl"
    path.write_text(json.dumps({"image_file": "a.png", "sent": "the dog", "gt_box": box}) + "\n")
    rows = load_data(_args(path, dataset_format="grounding", image_column="image_file", question_column="sent",
                           answer_column="gt_box", box_format=box_format), log=None).splits["train"]
    assert json.loads(rows[0]["answer"]) == [10.0, 5.0, 30.0, 35.0]


def test_fgvc_aircraft_official_layout(tmp_path):
    root = fgvc(tmp_path)
    loaded = load_data(_args(root, train_split="train", test_split="test", dataset_format="classification"),
                       log=None)
    train, test = loaded.splits["train"], loaded.splits["test"]
    assert loaded.source_format == "fgvc_aircraft"
    assert train["id"] == ["1025794", "1340192", "0056978"] and train["answer"] == ["707-320", "F/A-18", "Boeing 717"]
    assert test["answer"] == ["Boeing 717"] and test[0]["images"][0].size == (64, 68)


def test_flowers102_labels_are_one_based_and_names_come_from_a_list(tmp_path):
    root = flowers(tmp_path / "flowers")
    loaded = load_data(_args(root, train_split="train", test_split="test"), log=None)
    train, test = loaded.splits["train"], loaded.splits["test"]
    assert train["id"] == ["00001", "00002"] and train["answer"] == ["pink primrose", "colt's foot"]
    assert test["answer"] == ["colt's foot"] and loaded.dataset_format == "classification"
    bare = flowers(tmp_path / "bare", names=False)
    with pytest.raises(DataError, match=r"label numbers only; give the class names with --class_names FILE"):
        load_data(_args(bare, train_split="train"), log=None)
    clip = tmp_path / "clip.json"
    clip.write_text(json.dumps({"classes": ["a", "b", "c"], "templates": ["a photo of a {}."]}))
    assert load_data(_args(bare, train_split="val", class_names=str(clip)), log=None).splits["train"]["answer"] == ["b"]


def test_flowers102_without_scipy_names_the_install(tmp_path, monkeypatch):
    import builtins

    root = flowers(tmp_path / "flowers")
    real_import = builtins.__import__

    def no_scipy(name, *args, **kwargs):
        if name.startswith("scipy"):
            raise ImportError("no scipy")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_scipy)
    with pytest.raises(DataError, match=r"imagelabels.mat: reading Flowers102's .mat files needs scipy: pip install "
                                        r"scipy"):
        load_data(_args(root, train_split="train"), log=None)


def test_forced_source_format_and_wrong_layout(tmp_path):
    path = mathverse(tmp_path)
    assert load_data(_args(path, source_format="mathverse"), log=None).source_format == "mathverse"
    with pytest.raises(DataError, match=r"expected an object keyed by item id \(LogicVista items\), got list"):
        load_data(_args(path, source_format="logicvista"), log=None)
    with pytest.raises(ValueError, match=r"source_format: unknown value 'csv'"):
        load_data(_args(path, source_format="csv"), log=None)


# ----------------------------------------------------------------------------------------------- splits, errors


def test_a_single_file_serves_any_split_with_a_note(tmp_path):
    root = puzzles(tmp_path / "data")
    notes = []
    loaded = load_data(_args(root / "venn.json", train_split="train", test_split="validation"), log=notes.append)
    assert len(loaded.splits["train"]) == len(loaded.splits["test"]) == 1
    assert any("has no splits: its 1 rows serve as split 'train' and 'validation'" in n for n in notes)
    assert loaded.record()["splits"] == {"train": "train", "test": "validation"}


def _bad(tmp_path, lines: list[str], name="bad.jsonl") -> Path:
    _png(tmp_path / "a.png")
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


GOOD = json.dumps({"image": "a.png", "question": "How many?", "answer": "3"})


@pytest.mark.parametrize("lines, kw, message", [
    ([GOOD, '{"image": "a.png", "question": "q", '], {}, r"bad.jsonl line 2: not valid JSON"),
    ([GOOD, '["a.png", "q", "3"]'], {}, r"bad.jsonl line 2: expected a JSON object .* got list"),
    ([GOOD, json.dumps({"image": "a.png", "question": "   ", "answer": "3"})], {},
     r"bad.jsonl line 2, row 1 \(id 1\), field 'question': empty question"),
    ([GOOD, json.dumps({"image": "b.png", "question": "q", "answer": "3"})], {},
     r"bad.jsonl line 2, row 1 \(id 1\), field 'image': image file .*b.png does not exist"),
    ([json.dumps({"image": "a.png", "question": "q", "options": ["1", "2"], "answer": "5"})], {},
     r"bad.jsonl line 1, row 0 \(id 0\), field 'answer': answer '5' is not among the options"),
    ([json.dumps({"image": "a.png", "question": "q", "options": {"A": "1"}, "answer": "1"})], {},
     r"bad.jsonl line 1, field 'options': expected a list, got dict"),
    ([json.dumps({"image": "a.png", "question": "q", "options": ["1", "2"]})], {"source_format": "puzzlevqa"},
     r"bad.jsonl line 1, field 'answer': missing"),
    ([json.dumps({"images": {"path": "a.png"}, "messages": [], "solution": "3"})], {},
     r"bad.jsonl line 1, field 'images': expected a list of image paths, got dict"),
])
def test_bad_files_name_file_line_id_and_field(tmp_path, lines, kw, message):
    with pytest.raises(DataError, match=message):
        load_data(_args(_bad(tmp_path, lines), **kw), log=None)


def test_unreadable_image_is_named(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    path = _bad(tmp_path, [json.dumps({"image": "broken.png", "question": "q", "answer": "1"})])
    with pytest.raises(DataError, match=r"bad.jsonl line 1, row 0 \(id 0\), field 'image': image could not be read"):
        load_data(_args(path), log=None)


def test_object_where_a_list_of_rows_was_expected(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text(json.dumps({"data": [json.loads(GOOD)], "version": 1}))
    with pytest.raises(DataError, match=r"rows.json: expected a list of rows .* got dict with keys \['data', "
                                        r"'version'\]"):
        load_data(_args(path), log=None)


def test_cli_bad_line_is_one_line_and_nothing_is_written(tmp_path, capsys):
    from pepo.cli import main

    path = _bad(tmp_path, [GOOD, "{broken"])
    out = tmp_path / "run"
    code = main(["train", "--dataset", str(path), "--dry_run", "true", "--output_dir", str(out),
                 "--report_to", "none", "--test_split", "none"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("pepo: error:")]
    assert errors == [f"pepo: error: {path} line 2: not valid JSON (Expecting property name enclosed in double "
                      "quotes, column 2); fix or remove that line."]
    assert not out.exists()


def test_dry_run_records_the_detected_format_in_the_run_folder(tmp_path, capsys, tiny_vlm):
    from pepo.cli import main

    model, processor = tiny_vlm
    model.save_pretrained(tmp_path / "ckpt")
    processor.save_pretrained(tmp_path / "ckpt")
    root = logicvista(tmp_path / "data")
    out = tmp_path / "run"
    code = main(["train", "--dataset", str(root), "--model_name_or_path", str(tmp_path / "ckpt"), "--dry_run",
                 "true", "--output_dir", str(out), "--report_to", "none", "--warm_start", "false",
                 "--reward_funcs", "choice", "--bf16", "false"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert f"data: {root} read as logicvista" in printed.out and "dry run OK: 3 train rows, 3 test rows" in printed.out
    record = json.loads((out / "data.json").read_text())
    assert record["source_format"] == "logicvista" and record["rows"] == {"train": 3, "test": 3}


def test_offline_hub_dataset_and_model_are_named_with_the_fix(tmp_path, monkeypatch, capsys):
    import datasets

    from pepo.cli import main

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'hiyouga/geometry3k' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    code = main(["train", "--dataset", "hiyouga/geometry3k", "--dry_run", "true", "--output_dir",
                 str(tmp_path / "run"), "--report_to", "none"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "dataset 'hiyouga/geometry3k' could not be loaded from the Hugging Face Hub (ConnectionError" in err
    assert "--local-dir DIR`) and pass --dataset DIR" in err
    monkeypatch.undo()
    path = _bad(tmp_path, [GOOD])
    code = main(["train", "--dataset", str(path), "--model_name_or_path", str(tmp_path / "no-such-model"),
                 "--dry_run", "true", "--output_dir", str(tmp_path / "run2"), "--report_to", "none",
                 "--test_split", "none", "--warm_start", "false"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert f"model '{tmp_path / 'no-such-model'}' could not be loaded" in err and "--model_name_or_path DIR" in err


def test_dry_run_names_a_missing_report_to_package(tmp_path, monkeypatch, capsys):
    import importlib.util

    from pepo.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("tensorboard", "tensorboardX") else real(name, *a))
    code = main(["train", "--dry_run", "true", "--output_dir", str(tmp_path / "run"), "--report_to", "tensorboard",
                 "--num_train", "8", "--num_test", "4"])
    printed = capsys.readouterr()
    assert code == 2 and "Traceback" not in printed.err
    assert "report_to: tensorboard is not installed (pip install tensorboard)" in printed.err
    assert "dry run OK" in printed.out  # the rest was still validated


# ----------------------------------------------------------------------------------------------- one direction


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_data_flows_one_way_readers_rows_adapters_loading():
    readers = list((SRC / "readers").glob("*.py"))
    assert readers
    for path in readers:
        assert not {"pepo.data.adapters", "pepo.data.loading"} & _imports(path), path
    assert not {"pepo.data.adapters", "pepo.data.loading", "pepo.data.readers"} & _imports(SRC / "rows.py")
    assert not {"pepo.data.loading"} & _imports(SRC / "adapters.py")
    assert not any(m.startswith("pepo.data.readers") for m in _imports(SRC / "adapters.py"))


def test_eval_and_analyze_on_one_published_file_record_the_format(tmp_path, capsys, tiny_vlm):
    """`pepo eval --task puzzlevqa --dataset <one category file>`: no split needed, format printed and recorded."""
    from pepo.cli import main

    model, processor = tiny_vlm
    model.save_pretrained(tmp_path / "ckpt")
    processor.save_pretrained(tmp_path / "ckpt")
    path = puzzles(tmp_path / "data") / "circle_size_number.json"
    out = tmp_path / "eval"
    assert main(["eval", "--model", str(tmp_path / "ckpt"), "--task", "puzzlevqa", "--dataset", str(path),
                 "--num_samples", "1", "--max_new_tokens", "2", "--output_dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"data: {path} read as puzzlevqa" in printed and "serve as split 'test'" in printed
    record = json.loads((out / "data.json").read_text())
    assert record["source_format"] == "puzzlevqa" and record["rows"] == {"train": 2}
    assert json.loads((out / "summary.json").read_text())["source_format"] == "puzzlevqa"
    assert [json.loads(x)["id"] for x in (out / "samples.jsonl").read_text().splitlines()] == ["0", "1"]
    analysis = tmp_path / "analysis"
    assert main(["analyze", "tokens", "--model", str(tmp_path / "ckpt"), "--task", "puzzlevqa", "--dataset",
                 str(path), "--limit", "1", "--max_new_tokens", "2", "--heatmap_pngs", "0", "--shift", "none",
                 "--out", str(analysis)]) == 0
    assert json.loads((analysis / "data.json").read_text())["source_format"] == "puzzlevqa"
