"""Benchmark scorers against hand-checked cases, task subsets, and a MathVista-schema eval end to end."""

from __future__ import annotations

import json

import pytest
from datasets import Dataset, Features, Image as ImageFeature, Sequence, Value

from pepo.cli import main
from pepo.eval.scorers import letters_in, logicvista_score, mathverse_score, mathvista_score
from pepo.eval.tasks import TASKS, load_task_rows

MC = {"question_type": "multi_choice", "choices": ["3", "4", "5", "6"], "answer": "5", "answer_type": "text"}

CASES = [
    # MathVista multiple choice: letter, option text, closest option text, wrong letter, out-of-range letter
    (mathvista_score, "<answer>C</answer>", MC, 1.0),
    (mathvista_score, "<answer>(C)</answer>", MC, 1.0),
    (mathvista_score, "<answer>5</answer>", MC, 1.0),
    (mathvista_score, "<answer>5.</answer>", MC, 1.0),
    (mathvista_score, "<answer>B</answer>", MC, 0.0),
    (mathvista_score, "<answer>F</answer>", {**MC, "answer": "3"}, 0.0),  # F names no option
    (mathvista_score, "<answer>A or C</answer>", MC, 0.0),  # ambiguous
    (mathvista_score, "<answer>the hexagon</answer>",
     {**MC, "choices": ["triangle", "hexagon"], "answer": "hexagon"}, 1.0),  # closest option text (ratio 0.78)
    (mathvista_score, "<answer>zzz</answer>", {**MC, "choices": ["triangle", "hexagon"], "answer": "hexagon"}, 0.0),
    # MathVista free form by answer type
    (mathvista_score, "<answer>12</answer>", {"answer": "12", "answer_type": "integer"}, 1.0),
    (mathvista_score, "<answer>12.0</answer>", {"answer": "12", "answer_type": "integer"}, 1.0),
    (mathvista_score, "<answer>12.5</answer>", {"answer": "12", "answer_type": "integer"}, 0.0),
    (mathvista_score, "<answer>1,200</answer>", {"answer": "1200", "answer_type": "integer"}, 1.0),
    (mathvista_score, "<answer>3.14159</answer>", {"answer": "3.14", "answer_type": "float", "precision": 2}, 1.0),
    (mathvista_score, "<answer>3.1</answer>", {"answer": "3.14", "answer_type": "float", "precision": 2}, 0.0),
    (mathvista_score, "<answer>0.3</answer>", {"answer": "0.3", "answer_type": "float", "precision": 1}, 1.0),
    (mathvista_score, "<answer>no number</answer>", {"answer": "2", "answer_type": "integer"}, 0.0),
    (mathvista_score, "<answer>Yes</answer>", {"answer": "yes", "answer_type": "text"}, 1.0),
    (mathvista_score, "<answer>[1, 2, 3]</answer>", {"answer": "[1, 2, 3]", "answer_type": "list"}, 1.0),
    (mathvista_score, "<answer>[1, 3, 2]</answer>", {"answer": "[1, 2, 3]", "answer_type": "list"}, 0.0),
    (mathvista_score, "<answer>__import__('os')</answer>", {"answer": "[1]", "answer_type": "list"}, 0.0),
    # MathVerse: letters for multi-choice, the math verifier for free form
    (mathverse_score, "<answer>B</answer>", {"question_type": "multi-choice", "answer": "B"}, 1.0),
    (mathverse_score, "<answer>B:60°</answer>", {"question_type": "multi-choice", "answer": "B"}, 1.0),
    (mathverse_score, "<answer>A or B</answer>", {"question_type": "multi-choice", "answer": "B"}, 0.0),
    (mathverse_score, "<answer>\\frac{1}{2}</answer>", {"question_type": "free-form", "answer": "0.5"}, 1.0),
    (mathverse_score, "<answer>3</answer>", {"question_type": "free-form", "answer": "0.5"}, 0.0),
    # LogicVista: letter sets
    (logicvista_score, "<answer>C</answer>", {"answer": "C"}, 1.0),
    (logicvista_score, "<answer>A, C</answer>", {"answer": "A, C"}, 1.0),
    (logicvista_score, "<answer>C, A</answer>", {"answer": "AC"}, 0.0),  # "AC" is not two letters to letters_in
    (logicvista_score, "<answer>A</answer>", {"answer": "A, C"}, 0.0),
    (logicvista_score, "<answer>none</answer>", {"answer": "B"}, 0.0),
]


@pytest.mark.parametrize("scorer, completion, row, expected", CASES)
def test_scorer_cases(scorer, completion, row, expected):
    assert scorer(completion, row)[0] == expected


def test_letters_in():
    assert letters_in("(A), C and B") == ["A", "C", "B"]
    assert letters_in("Answer") == []


def _write(tmp_path, name, rows, features):
    folder = tmp_path / name
    folder.mkdir()
    Dataset.from_list(rows, features=features).to_parquet(folder / "test.parquet")
    return folder


def test_default_subsets_and_all_items(tmp_path):
    from PIL import Image

    img = Image.new("RGB", (28, 28))
    feats = Features({"image": ImageFeature(), "question": Value("string"), "answer": Value("string"),
                      "question_type": Value("string")})
    verse = _write(tmp_path, "verse", [
        {"image": img, "question": "q1", "answer": "A", "question_type": "multi-choice"},
        {"image": img, "question": "q2", "answer": "3", "question_type": "free-form"},
    ], feats)
    assert len(load_task_rows(TASKS["mathverse"], str(verse), "test")) == 1
    assert len(load_task_rows(TASKS["mathverse"], str(verse), "test", all_items=True)) == 2
    logic = _write(tmp_path, "logic", [
        {"image": img, "question": "q1", "answer": "B", "question_type": "x"},
        {"image": img, "question": "q2", "answer": "A, D", "question_type": "x"},
    ], feats)
    assert [r["answer"] for r in load_task_rows(TASKS["logicvista"], str(logic), "test")] == ["B"]


def test_mathvista_schema_end_to_end(tiny_vlm, tmp_path, capsys):
    from PIL import Image

    model, processor = tiny_vlm
    model.save_pretrained(tmp_path / "ckpt")
    processor.save_pretrained(tmp_path / "ckpt")
    img = Image.new("RGB", (112, 112), (200, 10, 10))
    feats = Features({"pid": Value("string"), "decoded_image": ImageFeature(), "query": Value("string"),
                      "answer": Value("string"), "choices": Sequence(Value("string")),
                      "question_type": Value("string"), "answer_type": Value("string"), "precision": Value("float64")})
    data = _write(tmp_path, "mathvista", [
        {"pid": "1", "decoded_image": img, "query": "Which is red?", "answer": "a", "choices": ["a", "b"],
         "question_type": "multi_choice", "answer_type": "text", "precision": None},
        {"pid": "2", "decoded_image": img, "query": "How many?", "answer": "2", "choices": None,
         "question_type": "free_form", "answer_type": "integer", "precision": None},
    ], feats)
    out = tmp_path / "out"
    assert main(["eval", "--model", str(tmp_path / "ckpt"), "--task", "mathvista", "--dataset", str(data),
                 "--split", "test", "--num_samples", "2", "--max_new_tokens", "4", "--output_dir", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["prompts"] == 2 and "closest option text" in summary["protocol"]
    lines = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    # a multiple-choice sample either names one of the options or scores 0 (ids are MathVista pids)
    mc = [r for r in lines if r["id"] == "1"]
    assert len(mc) == 2 and all(r["extracted"] in ("a", "b") or r["score"] == 0.0 for r in mc)
    assert all(r["score"] in (0.0, 1.0) for r in lines)
