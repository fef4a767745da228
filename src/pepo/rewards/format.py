"""Format rewards: does the completion follow the answer protocol the prompt asked for?

Two protocols:

* ``"think_answer"`` (default): ``<think>...</think><answer>...</answer>``. 1.0 iff the whole text
  (leading/trailing whitespace and whitespace between the two blocks allowed) is exactly one think block
  followed by exactly one answer block, and the answer is not blank. The think block may be empty.
* ``"boxed"``: 1.0 iff the text outside the thinking contains at least one ``\\boxed{...}`` whose braces balance and whose content
  is not blank (the rest of the text is free).

**Stricter than the paper's release on purpose.** The release checks the think/answer format with an
unanchored search that does not check tag order or count, so e.g. ``<answer>5</answer><think>..</think>``,
two answer blocks, or text trailing after ``</answer>`` all earn the full format reward. Under RL a
loose rule is a free reward for degenerate layouts (answer-before-think, answer repeated to hedge); the
anchored rule only pays for the layout that downstream parsing (``extract_answer``) assumes. Expect the
format reward to start lower than with the release's rule and to be learned within the first steps.

Note: if a chat template pre-fills ``<think>`` in the prompt, the completion lacks the opening tag and
scores 0.0 here; put the tag in the completion (or do not pre-fill it) when using this reward.
"""

from __future__ import annotations

import re
from typing import Any

from pepo.rewards.answer import PROTOCOLS, boxed_contents, strip_thinking
from pepo.rewards.exact_match import completion_text

__all__ = ["format_reward", "boxed_format_reward", "boxed_spans", "last_boxed", "PROTOCOLS"]


_THINK_ANSWER = re.compile(r"\s*<think>(.*?)</think>\s*<answer>(.*?)</answer>\s*", re.DOTALL)
_TAGS = ("<think>", "</think>", "<answer>", "</answer>")


def boxed_spans(text: str) -> list[str]:
    """Contents of every ``\\boxed{...}`` with balanced braces, in order (nested braces kept intact).

    A ``\\boxed{`` whose braces never close ends the scan. Linear in the text length. (The answer contract's
    own scanner, :func:`pepo.rewards.answer.boxed_contents`.)
    """
    return boxed_contents(text)


def last_boxed(text: str) -> str | None:
    """Content of the last balanced ``\\boxed{...}``, or None if there is none."""
    spans = boxed_spans(text)
    return spans[-1] if spans else None


def _think_answer_ok(text: str) -> bool:
    if any(text.count(tag) != 1 for tag in _TAGS):
        return False
    match = _THINK_ANSWER.fullmatch(text)
    return bool(match) and bool(match.group(2).strip())


def _boxed_ok(text: str) -> bool:
    return any(span.strip() for span in boxed_spans(strip_thinking(text)))  # a box in the thinking is no answer


def format_reward(completions: list[Any], protocol: str = "think_answer", **_: Any) -> list[float]:
    """1.0 per completion that follows ``protocol`` ("think_answer" or "boxed"; see module doc), else 0.0."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"format_reward: unknown protocol {protocol!r}; choose from {PROTOCOLS}.")
    check = _think_answer_ok if protocol == "think_answer" else _boxed_ok
    return [float(check(completion_text(c))) for c in completions]


def boxed_format_reward(completions: list[Any], **kwargs: Any) -> list[float]:
    """:func:`format_reward` with ``protocol="boxed"``."""
    kwargs.pop("protocol", None)
    return format_reward(completions, protocol="boxed", **kwargs)
