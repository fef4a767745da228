"""`pepo eval --responses`: outputs generated elsewhere, scored with the task's own scorer; no model, no images."""

from __future__ import annotations

import json

import pytest

from pepo.cli import main
from pepo.eval.responses import ResponsesError, read_responses


def _lines(*records) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)


@pytest.fixture
def geometry_rows(tmp_path):
    """Three Geometry3K-style rows (hub columns) whose images do not exist: nothing may open them."""
    rows = [{"id": "a", "images": ["missing/a.png"], "problem": "Find x.", "answer": "21 \\sqrt { 3 }"},
            {"id": "b", "images": ["missing/b.png"], "problem": "Find y.", "answer": "\\frac { 3 } { 7 }"},
            {"id": "c", "images": ["missing/c.png"], "problem": "Find z.", "answer": "10 \\pi"}]
    path = tmp_path / "g3k.jsonl"
    path.write_text(_lines(*rows))
    return path


@pytest.fixture
def no_model(monkeypatch):
    """Loading a model or processor fails the test: --responses must not touch either."""
    import pepo.models.loading as loading

    def refuse(*_, **__):
        raise AssertionError("a model was loaded in --responses mode")

    monkeypatch.setattr(loading, "load_model_and_processor", refuse)
    monkeypatch.setattr(loading, "load_processor", refuse)


def test_responses_are_scored_with_the_task_scorer_and_mismatches_listed(geometry_rows, tmp_path, no_model, capsys):
    responses = tmp_path / "answers.jsonl"
    responses.write_text(_lines(
        {"id": "a", "sample": 0, "output": "<think>..</think><answer>21√3</answer>"},
        {"id": "a", "sample": 1, "output": "<answer>22\\sqrt{3}</answer>"},
        {"id": "b", "output": "<answer>3/7</answer>"},
        {"id": "zzz", "output": "<answer>1</answer>"},
        {"id": "a", "sample": 0, "output": "<answer>0</answer>"},  # duplicate (a, 0): the first line counts
    ))
    out = tmp_path / "out"
    assert main(["eval", "--responses", str(responses), "--task", "geometry3k", "--dataset", str(geometry_rows),
                 "--split", "train", "--output_dir", str(out)]) == 0
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [(r["id"], r["sample"], r["score"]) for r in records] == [("a", 0, 1.0), ("a", 1, 0.0), ("b", 0, 1.0)]
    summary = json.loads((out / "summary.json").read_text())
    # a: mean 0.5, majority = first of the tied answers (sample 0, right), pass 1; b: 1, 1, 1
    assert summary["prompts"] == 2 and summary["avg"] == 75.0 and summary["maj"] == 100.0 and summary["pass"] == 100.0
    assert summary["backend"] == "responses" and summary["model"] is None and summary["num_samples"] == 2
    matching = summary["matching"]
    assert matching["unknown_ids"] == ["zzz"] and matching["unknown_ids_count"] == 1
    assert matching["duplicate_ids"] == ["a"] and matching["duplicate_lines_count"] == 1
    assert matching["items_without_response"] == ["c"] and matching["items_without_response_count"] == 1
    md = (out / "summary.md").read_text()
    assert "| geometry3k | 2 | 75.00 | 100.00 | 100.00 |" in md
    assert "unknown ids: 1: zzz" in md and "items without a response: 1: c" in md
    assert "note: 1 unknown ids" in capsys.readouterr().out


def test_files_without_ids_are_matched_by_row_index(tmp_path, no_model):
    """A PuzzleVQA-style file has no id column: the 0-based row index is the id (an int or a string in the file)."""
    puzzles = tmp_path / "venn.json"  # JSON Lines named .json, as published; answer = option text, an int here
    puzzles.write_text(_lines({"image": "images/venn/venn_0000.png", "question": "Missing number?", "answer": 1,
                               "options": ["4", "8", "1", "9"]},
                              {"image": "images/venn/venn_0001.png", "question": "Missing number?", "answer": "8",
                               "options": ["4", "8", "1", "9"]}))
    responses = tmp_path / "r.jsonl"
    responses.write_text(_lines({"id": 0, "output": "<answer>(C)</answer>"}, {"id": "1", "output": "<answer>A</answer>"}))
    out = tmp_path / "out"
    assert main(["eval", "--responses", str(responses), "--task", "puzzlevqa", "--dataset", str(puzzles),
                 "--split", "train", "--output_dir", str(out)]) == 0
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [(r["id"], r["score"]) for r in records] == [("0", 1.0), ("1", 0.0)]


def test_model_and_responses_are_mutually_exclusive(geometry_rows, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--model", "m", "--responses", "r.jsonl", "--task", "geometry3k"])
    assert exit_info.value.code == 2
    assert "argument --responses: not allowed with argument --model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", "--task", "geometry3k"])
    assert "one of the arguments --model --responses is required" in capsys.readouterr().err


@pytest.mark.parametrize("bad_line, message", [
    ('{"id": "a", "output": "x"', "line 2: not valid JSON"),
    ('["a", "x"]', "line 2: expected an object"),
    ('{"output": "x"}', "line 2, field 'id': missing"),
    ('{"id": "a"}', "line 2, field 'output': missing"),
    ('{"id": "a", "output": "x", "sample": -1}', "line 2, field 'sample': must be an integer >= 0"),
])
def test_a_malformed_line_is_one_named_error_and_nothing_is_written(geometry_rows, tmp_path, capsys, bad_line, message):
    responses = tmp_path / "r.jsonl"
    responses.write_text(_lines({"id": "a", "output": "<answer>1</answer>"}, bad_line))
    out = tmp_path / "out"
    assert main(["eval", "--responses", str(responses), "--task", "geometry3k", "--dataset", str(geometry_rows),
                 "--split", "train", "--output_dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"pepo: error: {responses} {message}")
    assert not out.exists()


def test_read_responses_rejects_an_empty_file_and_a_folder_of_model_samples(geometry_rows, tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ResponsesError, match="no responses"):
        read_responses(empty)
    responses = tmp_path / "r.jsonl"
    responses.write_text(_lines({"id": "a", "output": "<answer>1</answer>"}))
    out = tmp_path / "out"
    out.mkdir()
    (out / "backend.txt").write_text("transformers\n")  # a model run's folder: never overwritten
    assert main(["eval", "--responses", str(responses), "--task", "geometry3k", "--dataset", str(geometry_rows),
                 "--split", "train", "--output_dir", str(out)]) == 2
    assert "holds samples drawn with the transformers backend" in capsys.readouterr().err


def test_no_known_id_is_an_error_naming_what_the_ids_look_like(geometry_rows, tmp_path, capsys):
    responses = tmp_path / "r.jsonl"
    responses.write_text(_lines({"id": 7, "output": "<answer>1</answer>"}))
    assert main(["eval", "--responses", str(responses), "--task", "geometry3k", "--dataset", str(geometry_rows),
                 "--split", "train", "--output_dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "no line names an item" in err and "['a', 'b', 'c']" in err
