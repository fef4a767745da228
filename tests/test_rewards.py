"""Reward functions: a table of real-looking completions, plus the contract with TRL and untrusted input."""

from __future__ import annotations

import math
import threading
import time
from functools import partial

import pytest

from pepo.rewards import (
    REWARDS,
    accuracy_reward,
    boxed_format_reward,
    choice_reward,
    format_reward,
    get_reward_funcs,
    iou50_reward,
    iou_reward,
)
from pepo.rewards.math_accuracy import _threaded_batch, is_safe_math

boxed_accuracy = partial(accuracy_reward, protocol="boxed")
boxed_accuracy.__name__ = "boxed_accuracy"  # type: ignore[attr-defined]

T = "<think>The two triangles are similar, so the sides are in proportion.</think>"
DOGS = ["labrador", "golden retriever", "poodle"]
IMG = (100, 100)

# (reward function, completion, dataset columns of that row, expected reward)
CASES = [
    # --- accuracy, <think><answer> protocol, geometry answers in the release's spaced LaTeX ------------
    pytest.param(accuracy_reward, T + r"<answer>\frac { 3 } { 7 }</answer>", {"answer": r"\frac{3}{7}"}, 1.0, id="acc-frac-spaced-pred"),
    pytest.param(accuracy_reward, T + "<answer>3/7</answer>", {"answer": r"\frac { 3 } { 7 }"}, 1.0, id="acc-frac-slash-vs-spaced-gold"),
    pytest.param(accuracy_reward, T + r"<answer>5 \sqrt { 3 }</answer>", {"answer": r"5\sqrt{3}"}, 1.0, id="acc-sqrt-spaced-pred"),
    pytest.param(accuracy_reward, T + r"<answer>5\sqrt{3}</answer>", {"answer": r"5 \sqrt { 3 }"}, 1.0, id="acc-sqrt-spaced-gold"),
    pytest.param(accuracy_reward, T + r"<answer>\frac { \sqrt { 3 } } { 2 }</answer>", {"answer": r"\frac{\sqrt{3}}{2}"}, 1.0, id="acc-nested-spaced"),
    pytest.param(accuracy_reward, T + "<answer>60°</answer>", {"answer": "60"}, 1.0, id="acc-degree-sign"),
    pytest.param(accuracy_reward, T + "<answer>60</answer>", {"answer": "60°"}, 1.0, id="acc-degree-sign-in-gold"),
    pytest.param(accuracy_reward, T + r"<answer>30^\circ</answer>", {"answer": "30"}, 1.0, id="acc-circ"),
    pytest.param(accuracy_reward, T + r"<answer>30 ^ { \circ }</answer>", {"answer": "30"}, 1.0, id="acc-circ-spaced"),
    pytest.param(accuracy_reward, T + "<answer>30 degrees</answer>", {"answer": "30"}, 1.0, id="acc-degrees-word"),
    pytest.param(accuracy_reward, T + "<answer>2.5</answer>", {"answer": r"\frac{5}{2}"}, 1.0, id="acc-decimal-vs-frac"),
    pytest.param(accuracy_reward, T + "<answer>0.5</answer>", {"answer": r"\frac { 1 } { 2 }"}, 1.0, id="acc-half"),
    pytest.param(accuracy_reward, T + "<answer>2π</answer>", {"answer": r"2\pi"}, 1.0, id="acc-pi-unicode"),
    pytest.param(accuracy_reward, T + r"<answer>2 \pi</answer>", {"answer": r"2\pi"}, 1.0, id="acc-pi-latex"),
    pytest.param(accuracy_reward, T + "<answer>12 cm</answer>", {"answer": "12"}, 1.0, id="acc-unit"),
    pytest.param(accuracy_reward, T + r"<answer>12 \text{ cm}^2</answer>", {"answer": "12"}, 1.0, id="acc-unit-text-squared"),
    pytest.param(accuracy_reward, T + "<answer>$60$</answer>", {"answer": "60"}, 1.0, id="acc-dollars"),
    pytest.param(accuracy_reward, T + r"<answer>\text{60}</answer>", {"answer": "60"}, 1.0, id="acc-text-wrapper"),
    pytest.param(accuracy_reward, T + r"<answer>\left( 1, 2 \right)</answer>", {"answer": "(1,2)"}, 1.0, id="acc-left-right"),
    pytest.param(accuracy_reward, T + "<answer>x = 8</answer>", {"answer": "8"}, 1.0, id="acc-equation"),
    # no closed <answer> span: no answer (the release's QA_Accuracy rule; the answer contract)
    pytest.param(accuracy_reward, "The area is 12 cm", {"answer": "12"}, 0.0, id="acc-no-tags-prose"),
    pytest.param(accuracy_reward, "<answer>The area is 12 cm</answer>", {"answer": "12"}, 1.0, id="acc-span-prose"),
    pytest.param(accuracy_reward, T + r"<answer>\frac{7}{3}</answer>", {"answer": r"\frac{3}{7}"}, 0.0, id="acc-wrong-inverted-frac"),
    pytest.param(accuracy_reward, T + "<answer>61</answer>", {"answer": "60"}, 0.0, id="acc-wrong-number"),
    # a decimal with 2+ places is right when the exact gold rounds (half up) to exactly it: 5√3 = 8.6603
    pytest.param(accuracy_reward, T + "<answer>8.66</answer>", {"answer": r"5\sqrt{3}"}, 1.0, id="acc-rounded-radical"),
    pytest.param(accuracy_reward, T + "<answer>8.67</answer>", {"answer": r"5\sqrt{3}"}, 0.0, id="acc-wrong-rounded-radical"),
    pytest.param(accuracy_reward, T + "<answer>8.7</answer>", {"answer": r"5\sqrt{3}"}, 0.0, id="acc-one-place-too-coarse"),
    pytest.param(accuracy_reward, T + "<answer>5</answer>", {"answer": r"5 \sqrt { 3 }"}, 0.0, id="acc-wrong-dropped-radical"),
    pytest.param(accuracy_reward, T + "<answer>3.14</answer>", {"answer": r"\pi"}, 1.0, id="acc-pi-approx"),
    pytest.param(accuracy_reward, T + "<answer>3.15</answer>", {"answer": r"\pi"}, 0.0, id="acc-wrong-pi-approx"),
    pytest.param(accuracy_reward, T + "<answer> </answer>", {"answer": "5"}, 0.0, id="acc-empty-answer"),
    pytest.param(accuracy_reward, T + "<answer>(B)</answer>", {"answer": "B"}, 1.0, id="acc-choice-paren"),
    pytest.param(accuracy_reward, T + "<answer>B.</answer>", {"answer": "B"}, 1.0, id="acc-choice-dot"),
    pytest.param(accuracy_reward, T + "<answer>Option B</answer>", {"answer": "B"}, 1.0, id="acc-choice-option"),
    pytest.param(accuracy_reward, T + "<answer>C</answer>", {"answer": "B"}, 0.0, id="acc-choice-wrong"),
    pytest.param(accuracy_reward, T + "<answer>A or B</answer>", {"answer": "B"}, 0.0, id="acc-choice-ambiguous"),
    # --- accuracy, boxed protocol: last balanced \boxed{} wins --------------------------------------------
    pytest.param(boxed_accuracy, r"So the ratio is \boxed{\frac{3}{7}}.", {"answer": r"\frac { 3 } { 7 }"}, 1.0, id="box-frac"),
    pytest.param(boxed_accuracy, r"Thus $\boxed{\frac{\sqrt{3}}{2}}$", {"answer": r"\frac{\sqrt{3}}{2}"}, 1.0, id="box-nested-braces"),
    pytest.param(boxed_accuracy, r"First \boxed{5}, but correcting: \boxed{7}", {"answer": "7"}, 1.0, id="box-last-wins"),
    pytest.param(boxed_accuracy, r"First \boxed{5}, but correcting: \boxed{7}", {"answer": "5"}, 0.0, id="box-earlier-box-ignored"),
    pytest.param(boxed_accuracy, "the answer is 7", {"answer": "7"}, 0.0, id="box-missing"),
    pytest.param(boxed_accuracy, r"\boxed{\frac{3}{7}", {"answer": r"\frac{3}{7}"}, 0.0, id="box-unbalanced"),
    pytest.param(boxed_accuracy, r"\boxed{\{1, 2\}}", {"answer": r"\{1,2\}"}, 1.0, id="box-escaped-braces-set"),
    # --- format ---------------------------------------------------------------------------------------------
    pytest.param(format_reward, T + "<answer>5</answer>", {}, 1.0, id="fmt-ok"),
    pytest.param(format_reward, "\n<think>\nreason\n</think>\n\n<answer> 5 </answer>\n", {}, 1.0, id="fmt-whitespace"),
    pytest.param(format_reward, "<think></think><answer>5</answer>", {}, 1.0, id="fmt-empty-think-allowed"),
    pytest.param(format_reward, "<answer>5</answer>", {}, 0.0, id="fmt-missing-think"),
    pytest.param(format_reward, "<answer>5</answer>" + T, {}, 0.0, id="fmt-answer-before-think"),
    pytest.param(format_reward, T + "<answer>5</answer><answer>6</answer>", {}, 0.0, id="fmt-two-answers"),
    pytest.param(format_reward, T + "<answer>  </answer>", {}, 0.0, id="fmt-empty-answer"),
    pytest.param(format_reward, T + "<answer>5</answer> I hope this helps", {}, 0.0, id="fmt-trailing-text"),
    pytest.param(format_reward, "Sure! " + T + "<answer>5</answer>", {}, 0.0, id="fmt-leading-text"),
    pytest.param(format_reward, "<think>a<think>b</think><answer>5</answer>", {}, 0.0, id="fmt-nested-think"),
    pytest.param(boxed_format_reward, r"so \boxed{5}", {}, 1.0, id="bfmt-ok"),
    pytest.param(boxed_format_reward, r"so \boxed{\frac{1}{\sqrt{2}}}", {}, 1.0, id="bfmt-nested"),
    pytest.param(boxed_format_reward, r"so \boxed{ }", {}, 0.0, id="bfmt-empty"),
    pytest.param(boxed_format_reward, r"so \boxed{\frac{1}{2}", {}, 0.0, id="bfmt-unbalanced"),
    pytest.param(boxed_format_reward, "so the answer is 5", {}, 0.0, id="bfmt-none"),
    # --- IoU (boxes [x1, y1, x2, y2] in pixels) -------------------------------------------------------------
    pytest.param(iou_reward, "<answer>[10, 20, 110, 220]</answer>", {"answer": [10, 20, 110, 220]}, 1.0, id="iou-exact"),
    # inter = 50*100 = 5000; union = 10000 + 10000 - 5000 = 15000 -> 1/3
    pytest.param(iou_reward, "<answer>[50, 0, 150, 100]</answer>", {"answer": [0, 0, 100, 100]}, 1 / 3, id="iou-half-shifted"),
    # pred is the top half of gold: inter = 100*50 = 5000; union = 10000 -> 0.5
    pytest.param(iou_reward, "<answer>[0, 0, 100, 50]</answer>", {"answer": [0, 0, 100, 100]}, 0.5, id="iou-top-half"),
    pytest.param(iou_reward, '<answer>{"bbox_2d": [0, 0, 100, 50], "label": "cat"}</answer>', {"answer": "[0, 0, 100, 100]"}, 0.5, id="iou-qwen-json-and-string-gold"),
    pytest.param(iou_reward, '```json\n[{"bbox_2d": [10, 20, 110, 220]}]\n```', {"answer": [10, 20, 110, 220]}, 1.0, id="iou-no-tags-json-list"),
    pytest.param(iou_reward, "<answer>[10, 20, 110]</answer>", {"answer": [10, 20, 110, 220]}, 0.0, id="iou-three-numbers"),
    pytest.param(iou_reward, "<answer>the cat on the left</answer>", {"answer": [10, 20, 110, 220]}, 0.0, id="iou-no-box"),
    pytest.param(iou_reward, "<answer>[110, 220, 10, 20]</answer>", {"answer": [10, 20, 110, 220]}, 0.0, id="iou-inverted-not-swapped"),
    pytest.param(iou_reward, "<answer>[nan, 0, 10, 10]</answer>", {"answer": [0, 0, 10, 10]}, 0.0, id="iou-nan"),
    pytest.param(iou_reward, "<answer>[0, 0, 1e999, 10]</answer>", {"answer": [0, 0, 10, 10]}, 0.0, id="iou-inf"),
    # clipped to the 100x100 image, [50, 50, 150, 150] is [50, 50, 100, 100] (unclipped IoU would be 0.25)
    pytest.param(iou_reward, "<answer>[50, 50, 150, 150]</answer>", {"answer": [50, 50, 100, 100], "image_size": IMG}, 1.0, id="iou-clipped"),
    # whole-image box vs a 60%-of-image target: plain IoU 0.6, the anti-hacking rule makes it 0
    pytest.param(iou_reward, "<answer>[0, 0, 100, 100]</answer>", {"answer": [0, 0, 60, 100], "image_size": IMG}, 0.0, id="iou-whole-image-hack"),
    pytest.param(iou_reward, "<answer>[0, 0, 100, 100]</answer>", {"answer": [0, 0, 60, 100]}, 0.6, id="iou-whole-image-unknown-size"),
    # the target itself covers 95% of the image: the whole-image box is fine, IoU = 9500/10000
    pytest.param(iou_reward, "<answer>[0, 0, 100, 100]</answer>", {"answer": [0, 0, 100, 95], "image_size": IMG}, 0.95, id="iou-whole-image-legit"),
    pytest.param(iou50_reward, "<answer>[50, 0, 150, 100]</answer>", {"answer": [0, 0, 100, 100]}, 0.0, id="iou50-miss"),
    pytest.param(iou50_reward, "<answer>[0, 0, 100, 50]</answer>", {"answer": [0, 0, 100, 100]}, 1.0, id="iou50-hit-at-threshold"),
    pytest.param(iou50_reward, "<answer>[0, 0, 100, 49]</answer>", {"answer": [0, 0, 100, 100]}, 0.0, id="iou50-just-below"),
    pytest.param(iou50_reward, "<answer>[10, 20, 110, 220]</answer>", {"answer": [10, 20, 110, 220]}, 1.0, id="iou50-exact"),
    # --- choice ---------------------------------------------------------------------------------------------
    pytest.param(choice_reward, "<answer>B</answer>", {"answer": "B"}, 1.0, id="ch-letter"),
    pytest.param(choice_reward, "<answer>(B)</answer>", {"answer": "B"}, 1.0, id="ch-paren"),
    pytest.param(choice_reward, "<answer>B.</answer>", {"answer": "(B)"}, 1.0, id="ch-dot-vs-paren-gold"),
    pytest.param(choice_reward, "<answer>B) golden retriever</answer>", {"answer": "B"}, 1.0, id="ch-letter-with-text"),
    pytest.param(choice_reward, "<answer>Option B</answer>", {"answer": "B"}, 1.0, id="ch-option"),
    pytest.param(choice_reward, "<answer>answer: b</answer>", {"answer": "B"}, 1.0, id="ch-answer-colon-lowercase"),
    pytest.param(choice_reward, "<answer>The answer is B because the ears are floppy.</answer>", {"answer": "B"}, 1.0,
                 id="ch-sentence"),
    pytest.param(choice_reward, "The answer is B because the ears are floppy.", {"answer": "B"}, 0.0,
                 id="ch-sentence-untagged"),
    pytest.param(choice_reward, "<answer>C</answer>", {"answer": "B"}, 0.0, id="ch-wrong"),
    pytest.param(choice_reward, "<answer>A or B</answer>", {"answer": "B"}, 0.0, id="ch-ambiguous-or"),
    pytest.param(choice_reward, "<answer>(A), (B)</answer>", {"answer": "B"}, 0.0, id="ch-ambiguous-list"),
    pytest.param(choice_reward, "<answer>Golden Retriever</answer>", {"answer": "B", "choices": DOGS}, 1.0, id="ch-option-text-for-letter"),
    pytest.param(choice_reward, "<answer>poodle</answer>", {"answer": "B", "choices": DOGS}, 0.0, id="ch-wrong-option-text"),
    pytest.param(choice_reward, "<answer>Golden-Retriever.</answer>", {"answer": "golden retriever"}, 1.0, id="ch-class-name"),
    pytest.param(choice_reward, "<answer>a poodle</answer>", {"answer": "poodle"}, 1.0, id="ch-class-article"),
    pytest.param(choice_reward, "<answer>(C)</answer>", {"answer": "poodle", "choices": DOGS}, 1.0, id="ch-letter-for-class"),
    pytest.param(choice_reward, "<answer>it is a poodle, maybe a labrador</answer>", {"answer": "poodle"}, 0.0, id="ch-no-substring"),
    pytest.param(choice_reward, "<answer>B. golden retriever</answer>", {"answer": "golden retriever"}, 1.0, id="ch-marker-then-class"),
]


@pytest.mark.parametrize(("reward_fn", "completion", "row", "expected"), CASES)
def test_reward_table(reward_fn, completion, row, expected):
    columns = {key: [value] for key, value in row.items()}  # TRL passes each column as a per-row list
    rewards = reward_fn(prompts=["p"], completions=[completion], completion_ids=[[1, 2]], **columns)
    assert isinstance(rewards, list) and len(rewards) == 1 and isinstance(rewards[0], float)
    assert rewards[0] == pytest.approx(expected, abs=1e-9)


def test_table_tests_every_function_both_ways():
    """Each reward function in the table has cases it must accept and cases it must reject (a function that
    always returned 1, or always 0, fails several rows), and the graded IoU has values strictly in between."""
    by_function: dict[str, list[float]] = {}
    for case in CASES:
        fn, _, _, expected = case.values
        by_function.setdefault(getattr(fn, "__name__", repr(fn)), []).append(expected)
    assert set(by_function) == {"accuracy_reward", "boxed_accuracy", "format_reward", "boxed_format_reward",
                                "iou_reward", "iou50_reward", "choice_reward"}
    for name, expected in by_function.items():
        accepted, rejected = expected.count(1.0), expected.count(0.0)
        assert accepted >= 2 and rejected >= 2, f"{name}: {accepted} cases score 1, {rejected} score 0"
    assert sum(0 < e < 1 for e in by_function["iou_reward"]) >= 2
    assert len({case.id for case in CASES}) == len(CASES)  # ids are unique, so a failure names one row


# One batch per function: message-list and string completions mixed, the batch size preserved.
BATCHES = [
    (format_reward, {}),
    (boxed_format_reward, {}),
    (accuracy_reward, {"answer": ["5", "7", "B"]}),
    (boxed_accuracy, {"answer": ["5", "7", "B"]}),
    (iou_reward, {"answer": [[0, 0, 5, 5]] * 3, "image_size": [(10, 10)] * 3}),
    (iou50_reward, {"answer": ["[0, 0, 5, 5]"] * 3}),
    (choice_reward, {"answer": ["B", "B", "C"], "choices": [DOGS] * 3}),
]


@pytest.mark.parametrize(("reward_fn", "columns"), BATCHES, ids=lambda x: getattr(x, "__name__", ""))
def test_message_lists_and_batch_shape(reward_fn, columns):
    good = [{"role": "assistant", "content": T + r"<answer>5 \boxed{5} [0, 0, 5, 5] B</answer>"}]
    completions = [
        [{"role": "assistant", "content": T + r"<answer>\boxed{5}</answer>"}],
        [{"role": "assistant", "content": [{"type": "text", "text": "no answer here"}]}],
        "",
    ]
    rewards = reward_fn(prompts=["p"] * 3, completions=completions, completion_ids=[[1]] * 3, trainer_state=None, **columns)
    assert isinstance(rewards, list) and len(rewards) == 3
    assert all(isinstance(r, float) and 0.0 <= r <= 1.0 for r in rewards)
    assert rewards[2] == 0.0  # an empty completion never scores
    assert len(reward_fn(completions=[good], **{k: v[:1] for k, v in columns.items()})) == 1


def test_message_list_scores_like_string():
    text = T + r"<answer>\frac { 3 } { 7 }</answer>"
    message = [{"role": "assistant", "content": text}]
    assert accuracy_reward([message, text], answer=[r"\frac{3}{7}"] * 2) == [1.0, 1.0]
    assert format_reward([message]) == [1.0]
    parts = [{"role": "assistant", "content": [{"type": "text", "text": "<answer>(C)</answer>"}]}]
    assert choice_reward([parts], answer=["C"]) == [1.0]


def test_registry_names_and_existing_entries():
    expected = {"synthetic_accuracy", "exact_match", "format", "boxed_format", "accuracy", "iou", "iou50", "choice"}
    assert expected <= set(REWARDS)
    assert REWARDS["accuracy"] is accuracy_reward and REWARDS["iou50"] is iou50_reward
    assert get_reward_funcs(["exact_match"])[0](["<answer>Yes.</answer>"], answer=["yes"]) == [1.0]
    assert callable(REWARDS["synthetic_accuracy"])
    assert all(getattr(f, "__name__", None) for f in REWARDS.values())  # TRL logs rewards by __name__
    with pytest.raises(ValueError, match="unknown reward"):
        get_reward_funcs(["nope"])


def test_unknown_protocol_rejected():
    with pytest.raises(ValueError, match="protocol"):
        format_reward(["x"], protocol="xml")
    with pytest.raises(ValueError, match="protocol"):
        accuracy_reward(["x"], answer=["1"], protocol="xml")


def test_iou_image_size_kwarg_broadcast_and_threshold_kwarg():
    completions = ["[50, 50, 150, 150]", "[0, 0, 100, 100]"]
    gold = [[50, 50, 100, 100], [0, 0, 60, 100]]
    assert iou_reward(completions, answer=gold, image_size=(100, 100)) == [1.0, 0.0]
    assert iou_reward(completions, answer=gold, image_size={"width": 100, "height": 100}) == [1.0, 0.0]
    assert iou_reward(completions, solution=gold) == pytest.approx([0.25, 0.6])  # `solution` column, no size
    assert iou_reward(completions, solution=gold, threshold=0.5) == [0.0, 1.0]


# Hostile answers: rejected by the input bounds before any parser runs.
HOSTILE = [
    "10^{10^{10}}",
    r"\frac{1}{10^{10^{10}}}",
    "10**10**10",
    "9^9^9",
    "10^{100000000}",
    "(9^{999})^{999}",
    "(10^{6})!",
    "100000!",
    "10!!!!",
    r"\sum_{i=1}^{1000000000} i",
    "{" * 40 + "1" + "}" * 40,
    "1" * 5000,
]


@pytest.mark.parametrize("answer", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_answers_rejected_instantly(answer):
    assert not is_safe_math(answer)
    start = time.monotonic()
    assert accuracy_reward(["<answer>" + answer + "</answer>"], answer=["5"]) == [0.0]
    assert boxed_accuracy(["\\boxed{" + answer + "}"], answer=["5"]) == [0.0]
    assert time.monotonic() - start < 1.0


def test_safe_answers_pass_the_bounds():
    for answer in [r"\frac{10!}{3!7!}", "x^{2}", r"30^{\circ}", "2^{10}", r"\left(\frac{1}{2}\right)^{3}", "10^{-3}"]:
        assert is_safe_math(answer), answer


def test_slow_verification_is_cut_off_and_the_batch_goes_on():
    # (1+x)^{1000} passes the input bounds but sympy expands it for far longer than the limit.
    completions = ["<answer>(1+x)^{1000}</answer>", r"<answer>\frac { 3 } { 7 }</answer>", "<answer>6</answer>"]
    start = time.monotonic()
    rewards = accuracy_reward(completions, answer=["5", r"\frac{3}{7}", "6"], timeout_seconds=1.0)
    elapsed = time.monotonic() - start
    assert rewards == [0.0, 1.0, 1.0]  # the items after the killed one are graded by a fresh child
    assert elapsed < 3.0


def test_time_limit_works_outside_the_main_thread():
    out = {}

    def worker():
        start = time.monotonic()
        out["rewards"] = accuracy_reward(["<answer>(1+x)^{1000}</answer>", "<answer>60°</answer>"], answer=["5", "60"], timeout_seconds=1.0)
        out["elapsed"] = time.monotonic() - start

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(10)
    assert not thread.is_alive()
    assert out["rewards"] == [0.0, 1.0] and out["elapsed"] < 3.0


def test_thread_guard_fallback_grades():
    assert _threaded_batch([(r"\frac{1}{2}", "0.5"), ("3", "4")], 2.0) == [True, False]


def test_runaway_completion_is_cheap():
    long_text = "<think>" + "lots of thinking " * 20_000 + "</think><answer>" + "7" * 2000 + "</answer>"
    start = time.monotonic()
    assert accuracy_reward([long_text], answer=["7"]) == [0.0]
    assert iou_reward([long_text], answer=[[0, 0, 1, 1]]) == [0.0]
    assert choice_reward([long_text], answer=["A"]) == [0.0]
    assert format_reward([long_text]) == [1.0]
    assert time.monotonic() - start < 2.0


def test_calls_are_independent():
    # Same inputs, same outputs, whatever was graded in between (nothing cached across calls).
    first = accuracy_reward(["<answer>0.5</answer>", "<answer>2</answer>"], answer=[r"\frac{1}{2}", "3"])
    accuracy_reward(["<answer>3</answer>"], answer=["3"])
    assert accuracy_reward(["<answer>0.5</answer>", "<answer>2</answer>"], answer=[r"\frac{1}{2}", "3"]) == first == [1.0, 0.0]
    assert not math.isnan(sum(first))
