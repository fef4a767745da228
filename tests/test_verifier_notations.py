"""The math verifier reads how models write answers (issue 10, item 6).

* On the real Geometry3K answers (../shared/realdata, skipped where absent): the labelled notation table of
  benchmarks/verifier_notations.py, >= 99.5% of right notations judged right and no wrong value accepted.
* Without that folder: a literal table of notations of real Geometry3K answers, the plain-text/Unicode rewriter,
  the table builder on a two-row file in the published schema, and the safety bounds on the new notations.
"""

from __future__ import annotations

import json

import pytest

from benchmarks.verifier_notations import DEFAULT_REALDATA, build_table, measure, parse_answer, pepo_grade
from pepo.rewards.math_accuracy import accuracy_reward, grade_math, is_safe_math, plain_to_latex

# (gold as published in Geometry3K, what a model writes, right?)
NOTATIONS = [
    (r"21 \sqrt { 3 }", r"21 \sqrt { 3 }", True),
    (r"21 \sqrt { 3 }", r"21\sqrt{3}", True),
    (r"21 \sqrt { 3 }", "21 sqrt(3)", True),
    (r"21 \sqrt { 3 }", "21*sqrt(3)", True),
    (r"21 \sqrt { 3 }", "21√3", True),
    (r"21 \sqrt { 3 }", "21 √(3)", True),
    (r"21 \sqrt { 3 }", "36.37", True),  # 36.373...: a decimal with 2+ places, rounded half up
    (r"21 \sqrt { 3 }", "36.373 units", True),
    (r"\sqrt { 7 }", "√7", True),
    (r"\sqrt { 7 }", "sqrt 7", True),
    (r"2 \sqrt { 10 }", "2√(10)", True),
    (r"3 \sqrt 2", "3√2", True),
    (r"10 \pi", "10 pi", True),
    (r"10 \pi", "10π", True),
    (r"10 \pi", "10*pi", True),
    (r"\frac { 5 } { 3 } \pi", "5π/3", True),
    (r"\frac { 5 } { 3 } \pi", "(5 pi)/3", True),
    (r"\frac { 3 } { 7 }", "3/7", True),
    (r"\frac { 3 } { 7 }", "0.429", True),
    (r"\frac { 13 \sqrt { 2 } } { 2 }", "13√2/2", True),
    (r"\frac { 1 } { \sqrt { 3 } }", "1/sqrt(3)", True),
    (r"4 \frac { 4 } { 11 }", "48/11", True),
    (r"64 - 16 \pi", "64 − 16π", True),  # U+2212 minus
    (r"20 y^2 - 10 y", "20y² - 10y", True),
    (r"\frac { \sqrt 3 } { 4 } : 1", "√3/4 : 1", True),
    ("60", "60°", True),
    ("60", r"60^{\circ}", True),
    ("60", "60 degrees", True),
    ("12", "12 inches", True),
    (r"32 \pi", "32π square units", True),
    ("1153", "1,153", True),
    ("38707.6", "38,707.6", True),
    (r"\angle 1 \cong \angle 4", "∠1 ≅ ∠4", True),
    ("A D and B E", "a d and b e", True),
    ("x < 60", "x<60", True),
    # wrong values
    (r"21 \sqrt { 3 }", "22√3", False),
    (r"21 \sqrt { 3 }", "21√2", False),  # wrong radicand
    (r"21 \sqrt { 3 }", "21", False),  # radical dropped
    (r"21 \sqrt { 3 }", "21π", False),
    (r"21 \sqrt { 3 }", "36.38", False),  # the decimal off by one unit in the last place
    (r"21 \sqrt { 3 }", "36.4", False),  # one place is too coarse to tell
    (r"\sqrt { 7 }", "√8", False),
    (r"10 \pi", "11 pi", False),
    (r"10 \pi", "31.43", False),
    (r"\frac { 3 } { 7 }", "7/3", False),
    (r"\frac { 3 } { 7 }", "0.43 0", False),
    ("60", "61°", False),
    ("1153", "1,154", False),
    ("18.8", "18.83", False),  # a rounded gold is not an exact value to approximate
    (r"\angle 1 \cong \angle 4", r"\angle 2 \cong \angle 4", False),
    ("a + b = 90", "90", False),  # the right side of an equation that is the answer is not the answer
    ("A D and B E", "A D and B F", False),
    ("not enough information", "enough information", False),
]


@pytest.mark.parametrize("gold, text, right", NOTATIONS, ids=[f"{g}|{t}" for g, t, _ in NOTATIONS])
def test_notations_of_real_geometry3k_answers(gold, text, right):
    assert grade_math(text, gold) is right


def test_accuracy_reward_reads_unicode_inside_the_answer_tags_and_boxes():
    completions = ["<think>..</think><answer>21√3</answer>", r"<think>..</think><answer>\boxed{21\sqrt{3}}</answer>",
                   "<think>..</think><answer>22√3</answer>"]
    assert accuracy_reward(completions, [r"21 \sqrt { 3 }"] * 3) == [1.0, 1.0, 0.0]


@pytest.mark.parametrize("text, latex", [
    ("21 sqrt(3)", r"21 \sqrt{3}"),
    ("sqrt 7", r"\sqrt{7}"),
    ("3√2", r"3\sqrt{2}"),
    ("√(10)", r"\sqrt{10}"),
    ("√(2+√3)", r"\sqrt{2+\sqrt{3}}"),
    ("∛8", r"\sqrt[3]{8}"),
    ("1,153", "1153"),
    ("2,3", "2,3"),  # not a thousands separator: kept (a list)
    ("y²", "y^2"),
    (r"\sqrt{3}", r"\sqrt{3}"),  # LaTeX is left alone
    ("spin", "spin"),  # "pi" inside a word is not pi
])
def test_plain_to_latex(text, latex):
    assert " ".join(plain_to_latex(text).split()) == latex


def test_new_notations_keep_the_safety_bounds():
    assert not is_safe_math(plain_to_latex("10^9²"))  # a power tower written with a superscript
    assert not grade_math("10^9²", "1")
    assert not grade_math("√(" * 11 + "2" + ")" * 11, "2")  # nesting through the root rewriter
    assert not grade_math("9" * 1001, "9")  # length


def test_table_builder_on_a_file_in_the_published_schema(tmp_path):
    folder = tmp_path / "geometry3k" / "pepo_jsonl"
    folder.mkdir(parents=True)
    rows = [("Find the area of the figure. Round to the nearest tenth.", r"21 \sqrt { 3 }"),
            ("Find m \\angle 2.", "60"), ("Find x.", r"\frac { 3 } { 7 }")]
    for split in ("train", "val", "test"):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(
            {"images": [f"Geometry3K/{split}/1/img_diagram.png"], "solution": solution,
             "messages": [{"role": "user", "content": f"<image>\n{problem}"}]}) + "\n" for problem, solution in rows))
    table = build_table(tmp_path)
    texts = {(n.gold, n.text): n.right for n in table}
    assert texts[(r"21 \sqrt { 3 }", "21√3")] and texts[(r"21 \sqrt { 3 }", "36.37")]
    assert texts[("60", "60°")]  # an angle is asked: degree notations
    assert ("60", "60 square units") not in texts  # no unit is named
    assert texts[(r"21 \sqrt { 3 }", "21√2")] is False and texts[(r"\frac { 3 } { 7 }", "7/3")] is False
    assert not any(n.gold == "60" and n.text in ("60", "60.0") and not n.right for n in table)  # equal values are not wrong
    assert parse_answer("A D and B E") is None and parse_answer(r"\frac { \sqrt 3 } { 4 } : 1") is not None
    result = measure(table, pepo_grade)
    assert result["right_accepted_pct"] == 100.0 and result["wrong_accepted_pct"] == 0.0


def test_on_the_real_geometry3k_answers_right_notations_pass_and_no_wrong_value_does():
    if not (DEFAULT_REALDATA / "geometry3k" / "pepo_jsonl").is_dir():
        pytest.skip(f"{DEFAULT_REALDATA}/geometry3k is absent (real benchmark files live outside the repository)")
    table = build_table(DEFAULT_REALDATA)
    assert len({n.gold for n in table}) == 839  # every distinct answer of train/val/test
    result = measure(table, pepo_grade)
    shown = [(n.gold, n.text) for n in result["missed"][:10] + result["accepted"][:10]]
    assert result["right_accepted_pct"] >= 99.5, shown
    assert result["accepted"] == [], shown
