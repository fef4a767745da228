"""``--protocol both``: the release's verdicts next to pepo's, and the items where they differ with the reason."""

from __future__ import annotations

import re
from typing import Any, Callable

from pepo.rewards.answer import answer_span, read_answer, several_candidates

_RAW_SPAN = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)

__all__ = ["why_differs", "release_samples", "differences"]


def why_differs(task: str, text: str, row: dict, pepo_score: float, release_score: float) -> str:
    """One sentence: which rule makes the two protocols disagree on this response."""
    if answer_span(text) is None:
        where = "the text after <answer>" if "<answer>" in text.lower() else "the whole response, thinking included"
        if "<think>" in text and "</think>" not in text:
            where += " (the response stops inside <think>)"
        return f"no closed <answer> span outside the thinking: pepo reads no answer, the release reads {where}"
    raw = _RAW_SPAN.search(text)
    if raw and raw.group(1).strip() != answer_span(text):
        return "an <answer> span inside the thinking: the release reads it, pepo skips the thinking"
    answer = read_answer(text)
    if several_candidates(answer):
        return f"several candidates ({answer!r}): pepo scores 0, the release reads one of them"
    if not answer:
        return "an empty answer span: pepo reads no answer, the release reads the text after <answer>"
    if task == "logicvista":
        return "the release takes the last standalone letter of the span (or its first letter), pepo the option the " \
               "whole span names"
    if task == "mathverse" and str(row.get("question_type", "")).startswith("multi"):
        return "the release sees no options (the files have no choices field): it compares the span's text with " \
               "the gold by grade_answer; pepo maps letters and option texts to options"
    if task == "mathvista" and row.get("question_type") == "multi_choice":
        return "the release reads only '(x)' letters (case-sensitive) and otherwise takes the option nearest by edit " \
               "distance, which grade_answer then compares; pepo reads letters, option texts or a close text"
    if task == "mathvista" and row.get("answer_type") in ("integer", "float"):
        return "the release needs the span to be a bare number (int(float(x)) truncates 60.5 to 60); pepo needs " \
               "exactly one number, equal at the item's precision"
    return f"the graders disagree (pepo {'accepts' if pepo_score > release_score else 'rejects'}, mathruler's " \
           f"grade_answer {'accepts' if release_score > pepo_score else 'rejects'})"


def release_samples(samples: dict[str, list[dict]], rows: dict[str, dict],
                    score: Callable[[list[Any], dict], tuple[list[float], list[str]]]) -> dict[str, list[dict]]:
    """The records of ``samples`` re-scored under the release's rules (same ids, samples and outputs)."""
    out = {}
    for pid, records in samples.items():
        scores, extracted = score([r["output"] for r in records], rows[pid])
        out[pid] = [{**r, "score": float(s), "extracted": e} for r, s, e in zip(records, scores, extracted)]
    return out


def differences(task: str, pepo: dict[str, list[dict]], release: dict[str, list[dict]],
                rows: dict[str, dict]) -> list[dict]:
    """``[{"id", "sample", "pepo", "release", "why"}, ...]`` for every response the protocols score differently."""
    found = []
    for pid, records in pepo.items():
        for ours, theirs in zip(records, release[pid]):
            if ours["score"] != theirs["score"]:
                found.append({"id": pid, "sample": ours["sample"], "pepo": ours["score"], "release": theirs["score"],
                              "pepo_extracted": ours["extracted"], "release_extracted": theirs["extracted"],
                              "why": why_differs(task, ours["output"], rows[pid], ours["score"], theirs["score"])})
    return found
