"""``--protocol release``: the release scripts' rules on cases constructed from those rules (each case names the
rule it checks), the CLI option, and the error without mathruler."""

from __future__ import annotations

import builtins
import json

import pytest

from pepo.eval.protocols import release as rel

pytest.importorskip("mathruler")

MC = {"question_type": "multi_choice", "answer_type": "text", "precision": None,
      "choices": ["0.0 - 0.2", "0.2 - 0.4", "40", "145°"], "answer": "0.2 - 0.4"}


@pytest.mark.parametrize("text, expected", [
    ("<think>t</think><answer> 12 </answer>", "12"),  # first span, stripped
    ("<ANSWER>12</ANSWER>", "12"),  # tags case-insensitive
    ("< answer >12< / answer >", "12"),  # spaces inside tags
    ("<answer> </answer> 7", "</answer> 7"),  # blank span: the text after <answer>
    ("<think>it is 5</think><answer>The answer is", "The answer is"),  # unclosed: after <answer>
    ("<think>maybe 61 or 60", "<think>maybe 61 or 60"),  # no tag: the whole text, thinking included
    ("<answer>\\boxed{\\frac{1}{2}}</answer>", "\\frac{1}{2}"),  # ending box unwrapped
    ("<answer>\\boxed{1} and \\boxed{2}</answer>", "1} and \\boxed{2"),  # greedy: first box to last brace
    ("<answer>12.</answer>", "12"),  # one trailing full stop
    ("<answer>2π</answer>", "2\\pi"),
])
def test_extraction(text, expected):
    assert rel.release_extract(text) == expected


def test_mathvista_extraction_only_strips_dollars_and_the_ending_box():
    assert rel.mathvista_extract("<answer>$12$</answer>") == "12"
    assert rel.mathvista_extract("<answer>12.</answer>") == "12."  # no full-stop rule in MathVista
    assert rel.mathvista_extract("<answer>$\\boxed{B}$</answer>") == "B"


def test_levenshtein():
    assert rel.levenshtein("kitten", "sitting") == 3 and rel.levenshtein("", "abc") == 3
    assert rel.levenshtein("B.", "0.2 - 0.4") == 8


@pytest.mark.parametrize("answer, score, why", [
    ("(B)", 1.0, "the first (x) names the option"),
    ("B", 1.0, "a bare letter in range"),
    ("b", 0.0, "lowercase is not in the letter list: nearest option by edit distance (40)"),
    ("A", 1.0, "option A, 0.0 - 0.2, which grade_answer equates with 0.2 - 0.4"),
    ("(B) 145°", 1.0, "(x) wins over the text"),
    ("0.2 - 0.41", 1.0, "nearest option text"),
    (None, 0.0, "an empty response: the shortest option ('40')"),
])
def test_mathvista_multiple_choice(answer, score, why):
    text = "" if answer is None else f"<answer>{answer}</answer>"
    assert rel.mathvista_release(text, MC)[0] == score, why
    if answer is None:
        assert rel.mathvista_release(text, MC)[1] == "40"


def test_mathvista_numbers():
    integer = {"question_type": "free_form", "answer_type": "integer", "precision": None, "answer": "60"}
    assert rel.mathvista_release("<answer>60.5</answer>", integer) == (1.0, "60")  # int(float()) truncates
    assert rel.mathvista_release("<answer>60 cm</answer>", integer)[0] == 0.0  # not a number
    assert rel.mathvista_release("<answer>1,060</answer>", integer)[0] == 0.0
    floats = {"question_type": "free_form", "answer_type": "float", "precision": 2.0, "answer": "1.45"}
    assert rel.mathvista_release("<answer>1.449</answer>", floats) == (1.0, "1.45")
    assert rel.mathvista_release("60 is my guess", integer)[0] == 0.0


def test_mathverse_without_a_choices_field_compares_the_text():
    row = {"question_type": "multi-choice", "answer": "B", "choices": ["40°", "60°"], "choices_source": "question"}
    assert rel.mathverse_release("<answer>b</answer>", row)[0] == 1.0
    assert rel.mathverse_release("<answer>(B)</answer>", row)[0] == 1.0
    assert rel.mathverse_release("<answer>60°</answer>", row)[0] == 0.0  # the option's text: not the letter
    assert rel.mathverse_release("<answer>B. 60°</answer>", row)[0] == 0.0
    text_gold = dict(row, answer="090^\\circ T")
    assert rel.mathverse_release("<answer>A</answer>", text_gold)[0] == 0.0
    assert rel.mathverse_release("<answer>049^\\circ T</answer>", text_gold)[0] == 1.0  # grade_answer's error


def test_mathverse_with_a_choices_field_maps_the_last_standalone_letter():
    row = {"question_type": "multi-choice", "answer": "60°", "choices": ["40°", "60°"], "choices_source": "field"}
    assert rel.mathverse_release("<answer>I pick A, no, B</answer>", row) == (1.0, "60°")


@pytest.mark.parametrize("text, score", [
    ("<answer>B</answer>", 1.0),
    ("<answer>b</answer>", 1.0),
    ("<answer>A or B</answer>", 1.0),  # the last standalone letter
    ("<answer>B or A</answer>", 0.0),
    ("<think>It is B.</think>", 1.0),  # no span: the whole text
    ("<answer>Bb</answer>", 1.0),  # no standalone letter: the first letter
])
def test_logicvista(text, score):
    assert rel.logicvista_release(text, {"answer": "B"})[0] == score


def test_logicvista_empty_answer_reads_a():
    assert rel.logicvista_release("<answer></answer>", {"answer": "A"}) == (1.0, "A")


def test_geometry3k_and_the_training_reward():
    assert rel.geometry3k_release("<answer>\\frac{3}{7}</answer>", {"answer": "\\frac { 3 } { 7 }"})[0] == 1.0
    assert rel.geometry3k_release("60", {"answer": "60"})[0] == 1.0  # untagged: the whole text
    assert rel.release_reward(["60", "<answer>60</answer>", "<answer>60", "<ANSWER>60</ANSWER>", "<answer>60.</answer>"],
                              ["60"] * 5) == [0.0, 1.0, 0.0, 0.0, 1.0]


def test_release_keep_is_the_default_subsets():
    assert rel.release_keep("logicvista", {"answer": "A"}) and not rel.release_keep("logicvista", {"answer": "A, C"})
    assert rel.release_keep("mathverse", {"question_type": "multi-choice"})
    assert not rel.release_keep("mathverse", {"question_type": "free-form"})


def test_unknown_task_and_missing_mathruler(monkeypatch):
    with pytest.raises(ValueError, match="geometry3k, mathvista, mathverse, logicvista"):
        rel.release_scorer("refcoco")
    real_import = builtins.__import__

    def no_mathruler(name, *args, **kwargs):
        if name.startswith("mathruler"):
            raise ImportError("no mathruler")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_mathruler)
    with pytest.raises(ImportError, match="pip install mathruler pylatexenc"):
        rel.release_scorer("geometry3k")


def test_cli_protocol_both_writes_both_and_the_differences(tmp_path):
    from pepo.eval.cli import eval_main

    data = tmp_path / "dataset.json"
    data.write_text(json.dumps({
        "v1": {"imagename": "a.png", "question": "Which? Select from A-D", "answer": "B"},
        "v2": {"imagename": "b.png", "question": "Which? Select from A-D", "answer": "C"},
    }))
    responses = tmp_path / "responses.jsonl"
    responses.write_text("\n".join(json.dumps(r) for r in [
        {"id": "v1", "output": "<think>t</think><answer>b</answer>"},  # both right
        {"id": "v2", "output": "<think>it is C</think>"},  # only the release: whole text, last letter C
    ]) + "\n")
    out = tmp_path / "out"
    code = eval_main(["--responses", str(responses), "--task", "logicvista", "--dataset", str(data),
                      "--protocol", "both", "--output_dir", str(out)])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scoring_protocol"] == "both" and summary["avg"] == 50.0 and summary["release"]["avg"] == 100.0
    (diff,) = summary["protocol_differences"]
    assert diff["id"] == "v2" and diff["pepo"] == 0.0 and diff["release"] == 1.0
    assert "no closed <answer> span" in diff["why"]
    assert len((out / "samples_release.jsonl").read_text().splitlines()) == 2
    release_out = tmp_path / "release"
    assert eval_main(["--responses", str(responses), "--task", "logicvista", "--dataset", str(data),
                      "--protocol", "release", "--output_dir", str(release_out)]) == 0
    assert json.loads((release_out / "summary.json").read_text())["avg"] == 100.0
    assert eval_main(["--responses", str(responses), "--task", "refcoco", "--protocol", "release",
                      "--output_dir", str(tmp_path / "x")]) == 2
