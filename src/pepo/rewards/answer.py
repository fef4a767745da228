"""The answer contract: which part of a response is its answer. Every reward and every eval scorer reads it here.

A response is read in three steps.

1. **Thinking is removed** (:func:`strip_thinking`). A closed ``<think>...</think>`` block is thinking; text
   before a lone ``</think>`` (a chat template that pre-filled ``<think>``) is thinking; an unclosed ``<think>``
   runs up to the first ``<answer>`` tag after it, or to the end of a cut-off response. Nothing in the
   thinking is ever read as an answer, however confidently it names one.
2. **The answer span** (:func:`answer_span`). ``protocol="think_answer"``: the content of the *first* closed
   ``<answer>...</answer>`` left after step 1. No closed span means **no answer**: an unclosed ``<answer>``
   (a cut-off response), a bare answer after ``</think>`` and an untagged response all score 0. This is the
   release's reward rule (``QA_Accuracy`` returns 0 without a span), applied to evaluation too: reading
   untagged text would read hedges (``it could be 61 or 60``) as answers. ``protocol="boxed"``: the content of
   the *last* balanced ``\\boxed{...}`` left after step 1; none -> no answer.
3. **The final answer in the span** (:func:`final_answer`): a span that is one ``\\boxed{..}`` (or has
   boxes) gives the last box's content; ``$..$`` delimiters, one leading answer phrase (``The answer is``,
   ``Answer:``, ``So the final answer is``) and a trailing full stop are dropped. So
   ``<answer>The answer is 21 \\sqrt{3}.</answer>`` reads ``21 \\sqrt{3}``.

Then the benchmark's reading of that text (option letters, numbers, math), also defined here once:

* **Several candidates** (:func:`several_candidates`): an answer that names two values joined by ``or``
  (``60 or 62``, ``B or C``), or two numbers side by side (``1 2``) answers nothing: 0, whatever the gold
  (unless the whole text is the gold itself, e.g. a MathVista option written with ``or``).
* **The untagged exception** (``untagged="visible"``): the IoU reward (grounding models answer with bare JSON
  boxes) and exact match (the demo's prompt asks for a bare word; equality with the *whole* text cannot be won
  by hedging) read the text outside the thinking when the response has no ``<answer>`` tag at all; a cut-off
  ``<answer>`` still reads nothing.
* **Option letters** (:func:`read_choice`): ``B``, ``b``, ``(B)``, ``B.``, ``**B**``, ``Option B``,
  ``The answer is B``; a letter followed by the option's text (``(B) 60``) names B only when the text is
  B's (a letter and a text that disagree are a contradiction: no option; without the options the letter leads); the option's text alone, up to
  case and spacing, names its option. A letter is never fished out of free text.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

__all__ = [
    "PROTOCOLS",
    "strip_thinking",
    "answer_span",
    "final_answer",
    "read_answer",
    "several_candidates",
    "read_choice",
    "read_letters",
]

PROTOCOLS = ("think_answer", "boxed")

_THINK_OPEN, _THINK_CLOSE = "<think>", "</think>"
_ANSWER_SPAN = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_BOXED = re.compile(r"\\boxed\s*\{")
_ANSWER_PHRASE = re.compile(
    r"^(?:(?:so|thus|therefore|hence)\s*,?\s+)?(?:the\s+)?(?:final\s+|correct\s+)?answer\s*(?:is|:|=|：)\s*:?\s*",
    re.IGNORECASE,
)
_OR = re.compile(r"\s+or\s+", re.IGNORECASE)
_TWO_NUMBERS = re.compile(r"^\s*-?\d+(?:\.\d+)?\s+-?\d+(?:\.\d+)?\s*$")


def strip_thinking(text: str) -> str:
    """``text`` without its thinking (module doc, step 1); the remaining parts are joined by a space."""
    if _THINK_CLOSE in text and _THINK_OPEN not in text.split(_THINK_CLOSE, 1)[0]:
        text = text.rsplit(_THINK_CLOSE, 1)[1]  # pre-filled <think>: all before the last </think> is thinking
    kept, pos = [], 0
    while True:
        start = text.find(_THINK_OPEN, pos)
        if start < 0:
            kept.append(text[pos:])
            break
        kept.append(text[pos:start])
        end = text.find(_THINK_CLOSE, start)
        if end >= 0:
            pos = end + len(_THINK_CLOSE)
            continue
        answer = text.find("<answer>", start)  # unclosed: thinking runs to the answer tag, or to the end
        if answer < 0:
            break
        pos = answer
    return " ".join(part for part in kept if part)


def boxed_contents(text: str) -> list[str]:
    """Contents of every balanced ``\\boxed{...}`` in order (escaped braces ``\\{`` skipped); an unbalanced box
    ends the scan."""
    spans: list[str] = []
    pos = 0
    while True:
        match = _BOXED.search(text, pos)
        if match is None:
            return spans
        depth, i = 1, match.end()
        while i < len(text) and depth:
            if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in "{}":
                i += 2
                continue
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth:
            return spans
        spans.append(text[match.end() : i - 1])
        pos = i


def answer_span(text: str, protocol: str = "think_answer") -> str | None:
    """The raw answer span of a response (module doc, step 2), stripped; None when it has no answer."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown answer protocol {protocol!r}; choose from {PROTOCOLS}.")
    visible = strip_thinking(text)
    if protocol == "boxed":
        boxes = boxed_contents(visible)
        return boxes[-1].strip() if boxes else None
    match = _ANSWER_SPAN.search(visible)
    return match.group(1).strip() if match else None


def _strip_delimiters(text: str) -> str:
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if text.startswith(left) and text.endswith(right) and len(text) > len(left) + len(right):
            return text[len(left) : -len(right)].strip()
    return text


def final_answer(span: str, keep_phrase: bool = False) -> str:
    """The final answer written in a span (module doc, step 3). ``keep_phrase``: leave a leading answer phrase
    (the choice reader uses it to tell ``The answer is B because ...``, a letter, from ``A cat``, an article)."""
    text = span.strip()
    for _ in range(2):  # "The answer is $\\boxed{5}$." : phrase, stop, delimiters, box
        if not keep_phrase:
            text = _ANSWER_PHRASE.sub("", text, count=1).strip()
        text = text.rstrip(".。").strip()
        text = _strip_delimiters(text)
        boxes = boxed_contents(text)
        if boxes:
            text = boxes[-1].strip()
    return text


def read_answer(text: str, protocol: str = "think_answer", untagged: str = "none", keep_phrase: bool = False) -> str:
    """:func:`final_answer` of :func:`answer_span`; ``""`` when the response has no answer.

    ``untagged="visible"`` (the IoU and exact-match rewards: module doc) reads the text outside the thinking when
    the response has no ``<answer>`` tag; the default ``"none"`` reads nothing.
    """
    span = answer_span(text, protocol)
    if span is None and untagged == "visible":
        span = strip_thinking(text).strip() if "<answer>" not in text else None
    return "" if span is None else final_answer(span, keep_phrase)


def several_candidates(answer: str) -> bool:
    """True when the answer names several candidate values (``60 or 62``, ``B or C``, ``1 2``)."""
    parts = [p for p in _OR.split(answer.strip()) if p.strip()]
    return len(parts) > 1 or bool(_TWO_NUMBERS.match(answer))


# ----------------------------------------------------------------------------------------------- option letters

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_CLEAN = re.compile(r"\\(?:text|textbf|mathrm|mathbf|mbox)\s*\{([^{}]*)\}")
_OPTION_WORD = re.compile(r"^(?:option|choice)\s*:?\s*", re.IGNORECASE)
_LETTER_ALONE = re.compile(r"[(\[]?([A-Za-z])[)\]]?[.:)]?")
_LETTER_AND_TEXT = re.compile(r"(?:[(\[]([A-Za-z])[)\]]|([A-Z])[.:)])\s*(\S.*)", re.DOTALL)
_SEPARATOR = re.compile(r"\s*(?:,|/|&|;|\band\b|\n)\s*|\s+", re.IGNORECASE)


def _clean(text: str) -> str:
    text = _CLEAN.sub(r"\1", text).replace("**", "").replace("$", "")
    return " ".join(text.split())


def _same(a: str, b: str) -> bool:
    squash = lambda s: re.sub(r"\s+", "", _clean(s)).casefold().rstrip(".")  # noqa: E731
    return bool(squash(a)) and squash(a) == squash(b)


def read_choice(answer: str, choices: Sequence[Any] | None = None) -> int | None:
    """The 0-based option an answer names (module doc), or None (no option, several, or a contradiction).

    ``choices``: the option texts, A first (None or ``[]`` when unknown: then only letters are read).
    """
    options = [str(c) for c in choices] if choices else []
    text = _OPTION_WORD.sub("", _clean(answer)).strip()
    if not text:
        return None
    for i, option in enumerate(options):  # the option's exact text first: MathVista has options such as "(b)"
        if text == " ".join(option.split()):
            return i
    match = _LETTER_ALONE.fullmatch(text)
    if match:
        index = LETTERS.index(match.group(1).upper())
        return index if not options or index < len(options) else None
    match = _LETTER_AND_TEXT.fullmatch(text)
    if match:
        index = LETTERS.index((match.group(1) or match.group(2)).upper())
        if options:
            return index if index < len(options) and _same(match.group(3), options[index]) else None
        return index  # without the options the text cannot be checked: the letter leads
    for i, option in enumerate(options):  # the option's text up to case and spacing
        if _same(text, option):
            return i
    return None


def read_letters(answer: str) -> list[str] | None:
    """The set of option letters an answer names for a several-letter item (``A, C``, ``a and c``, ``(A)(C)``),
    uppercase and sorted; None when the text is not only letters."""
    text = _OPTION_WORD.sub("", _clean(answer)).strip()
    tokens = [t for t in _SEPARATOR.split(text.replace(")(", ") (")) if t]
    letters = []
    for token in tokens:
        match = _LETTER_ALONE.fullmatch(token)
        if not match:
            return None
        letters.append(match.group(1).upper())
    return sorted(set(letters)) if letters else None
