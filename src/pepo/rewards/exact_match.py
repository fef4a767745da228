"""Exact-match accuracy on the ``<answer>`` span: the reward for short, closed-form answers."""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from pepo.rewards.answer import read_answer

__all__ = ["completion_text", "extract_answer", "unwrap_boxed", "normalize_answer", "exact_match_reward"]

def completion_text(completion: Any) -> str:
    """Plain text of a TRL completion: a string, or a message / list of messages (the last one's content,
    whose content may be a string or a list of typed parts). Anything else gives ``""``."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    if isinstance(completion, list) and completion:
        content = completion[-1].get("content", "") if isinstance(completion[-1], dict) else completion[-1]
        if isinstance(content, list):  # content parts
            return "".join(p.get("text") or "" for p in content if isinstance(p, dict) and p.get("type", "text") == "text")
        return "" if content is None else str(content)
    return ""


_BOX_OPEN = re.compile(r"^\\(?:boxed|fbox)\s*\{")
_DELIMITERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))


def unwrap_boxed(text: str) -> str:
    """The content of ``text`` when all of it is one ``\\boxed{...}`` (or ``\\fbox``), optionally inside
    ``$..$`` / ``\\(..\\)`` / ``\\[..\\]`` and followed by a full stop; else ``text`` unchanged."""
    body = text.strip()
    for left, right in _DELIMITERS:
        if body.startswith(left) and body.rstrip(".").endswith(right) and len(body) > len(left) + len(right):
            body = body.rstrip(".")[len(left) : -len(right)].strip()
            break
    match = _BOX_OPEN.match(body)
    if not match:
        return text
    depth = 0
    for i in range(match.end() - 1, len(body)):
        depth += {"{": 1, "}": -1}.get(body[i], 0)
        if depth == 0:
            return body[match.end() : i].strip() if not body[i + 1 :].strip(" .") else text
    return text


def extract_answer(text: str, protocol: str = "think_answer", **contract: Any) -> str:
    """The final answer of a response under the answer contract (:mod:`pepo.rewards.answer`): the first closed
    ``<answer>`` span outside the thinking, its box / answer phrase / full stop removed; ``""`` when there is
    no closed span (cut off, untagged, or only thinking)."""
    return read_answer(text, protocol, **contract)


def normalize_answer(text: str) -> str:
    """NFKC, casefold, collapse whitespace, drop a trailing full stop."""
    text = " ".join(unicodedata.normalize("NFKC", text).casefold().split())
    return text.rstrip(".。").strip()


def exact_match_reward(completions: list[Any], answer: list[str], **_: Any) -> list[float]:
    """1.0 when the normalised prediction equals the normalised ground truth ``answer``, else 0.0.

    The prediction: the first closed ``<answer>`` span outside the thinking; a response with no ``<answer>`` tag
    at all is its text outside the thinking (the answer contract's untagged exception; ``<answer>3`` cut off
    scores 0).

    An empty prediction always scores 0; nothing is evaluated as code.
    """
    if len(completions) != len(answer):
        raise ValueError(f"{len(completions)} completions but {len(answer)} answers")
    rewards = []
    for completion, truth in zip(completions, answer):
        # untagged text outside the thinking counts (the demo's prompt asks for a bare word): equality of the
        # whole text cannot be won by hedging, unlike reading a number or letter out of it
        pred = normalize_answer(extract_answer(completion_text(completion), untagged="visible", keep_phrase=True))
        rewards.append(float(bool(pred) and pred == normalize_answer(str(truth))))
    return rewards
