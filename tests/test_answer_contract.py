"""The answer contract (pepo.rewards.answer): what the answer of a response is, for every reward and every scorer."""

from __future__ import annotations

import pytest

from pepo.eval.scorers import logicvista_score, mathverse_score, mathvista_score
from pepo.rewards import REWARDS
from pepo.rewards.answer import answer_span, read_answer, read_choice, read_letters, several_candidates, strip_thinking


def test_the_issue_reward_hole_is_closed():
    assert REWARDS["accuracy"](["<think>It could be 61 or 60, let me check the other"], answer=["60"]) == [0.0]


@pytest.mark.parametrize("text, span", [
    ("<think>a</think><answer>60</answer>", "60"),
    ("<think>a</think><answer>60</answer><answer>61</answer>", "60"),  # several spans: the first
    ("<think>draft <answer>61</answer></think><answer>60</answer>", "60"),  # a span in the thinking is skipped
    ("<think>unclosed thinking <answer>60</answer>", "60"),  # an unclosed think ends at the answer tag
    ("pre-filled think</think><answer>60</answer>", "60"),
    ("pre-filled think with <answer>61</answer></think>", None),
    ("<think>cut off, it is 60", None),
    ("<think>a</think><answer>The answer is", None),  # unclosed span: cut off
    ("<think>a</think> 60", None),  # bare answer after </think>: no span, no answer
    ("The answer is 60.", None),  # untagged
])
def test_answer_span(text, span):
    assert answer_span(text) == span


def test_boxed_protocol_reads_the_last_box_outside_the_thinking():
    assert answer_span("<think>\\boxed{1}</think> so \\boxed{2} then \\boxed{3}", "boxed") == "3"
    assert answer_span("<think>\\boxed{1}", "boxed") is None
    assert REWARDS["boxed_format"](["<think>\\boxed{1}</think> no box"]) == [0.0]


def test_strip_thinking():
    assert strip_thinking("a<think>b</think>c<think>d") == "a c"


@pytest.mark.parametrize("span, answer", [
    ("The answer is 21 \\sqrt{3}.", "21 \\sqrt{3}"),
    ("So the final answer is $\\boxed{5}$.", "5"),
    ("Answer: B", "B"),
    ("\\boxed{x} then \\boxed{7}", "7"),
])
def test_final_answer_in_a_span(span, answer):
    assert read_answer(f"<answer>{span}</answer>") == answer


def test_prose_around_latex_is_right_for_the_math_reward():
    assert REWARDS["accuracy"](["<answer>The answer is 21 \\sqrt{3}.</answer>"], answer=["21 \\sqrt { 3 }"]) == [1.0]


def test_several_candidates():
    assert several_candidates("60 or 62") and several_candidates("1 2") and several_candidates("B or C")
    assert not several_candidates("60") and not several_candidates("1,153") and not several_candidates("21 \\sqrt{3}")
    assert REWARDS["accuracy"](["<answer>60 or 62</answer>", "<answer>62 or 60</answer>"], answer=["60"] * 2) == [0, 0]


@pytest.mark.parametrize("answer, choices, index", [
    ("c", None, 2), ("(b)", None, 1), ("**B**", None, 1), ("Option D", None, 3), ("B.", None, 1),
    ("(B) 60", ["40", "60"], 1), ("(B) 40", ["40", "60"], None),  # letter and text disagree: no option
    ("60", ["40", "60"], 1), ("(b)", ["(c)", "(b)"], 1),  # an option's exact text first
    ("B or C", None, None), ("I think B", None, None),  # no fishing in free text
])
def test_read_choice(answer, choices, index):
    assert read_choice(answer, choices) == index


def test_read_letters():
    assert read_letters("a and c") == ["A", "C"] and read_letters("(C)(A)") == ["A", "C"]
    assert read_letters("C, D") == ["C", "D"] and read_letters("C because") is None


def test_scorers_fixed_classes():
    row = {"question_type": "free_form", "answer_type": "integer", "answer": "60", "precision": None, "choices": None}
    assert mathvista_score("<answer>60 or 62</answer>", row)[0] == 0.0  # was: the first number
    assert mathvista_score("<answer>1 2</answer>", {**row, "answer": "12"})[0] == 0.0  # was: 12
    assert mathvista_score("<answer>1,060</answer>", {**row, "answer": "1060"})[0] == 1.0
    assert logicvista_score("<answer>c</answer>", {"answer": "C"})[0] == 1.0
    verse = {"question_type": "multi-choice", "answer": "090^\\circ T",
             "choices": ["090^\\circ T", "180^\\circ T", "049^\\circ T", "041^\\circ T"]}
    assert mathverse_score("<answer>A</answer>", verse)[0] == 1.0
    assert mathverse_score("<answer>049^\\circ T</answer>", verse)[0] == 0.0
    assert mathverse_score("<answer>c</answer>", verse)[0] == 0.0
    assert mathverse_score("<answer>c</answer>", {**verse, "answer": "C"})[0] == 1.0  # lowercase letters are read
    false = {"question_type": "multi-choice", "answer": "False", "choices": ["True", "False"]}
    assert mathverse_score("<answer>False</answer>", false)[0] == 1.0
    assert mathverse_score("<answer>b</answer>", false)[0] == 1.0
    # a hub row without a choices column: the options are read from the prompt's text
    hub = {"question_type": "multi-choice", "answer": "B",
           "prompt": [{"role": "user", "content": [{"type": "text", "text": "Q?\nChoices:\nA:40°\nB:60°"}]}]}
    assert mathverse_score("<answer>60°</answer>", hub)[0] == 1.0
