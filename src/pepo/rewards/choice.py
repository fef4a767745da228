"""Choice reward: multiple-choice letters and short class names (puzzles, few-shot classification).

The prediction is the answer contract's (:mod:`pepo.rewards.answer`): the first closed ``<answer>`` span outside the
thinking, else nothing (0.0). Then:

* **Letter forms.** After light cleaning (``$``, ``\\text{}``, ``**`` removed) and dropping a leading
  ``answer:`` / ``the answer is`` / ``option`` / ``choice`` phrase, the prediction names letter X when it is
  ``X``, ``(X)``, ``[X]``, ``X.``, ``X)`` or ``X:`` alone (any case), or starts with ``(X)`` / ``X.`` / ``X)`` /
  ``X:`` followed by option text (uppercase), or starts with a bare uppercase ``X`` right after an explicit
  answer/option phrase (``The answer is B because ...``). Anything else names no letter: a letter is never
  fished out of free text.
* **Ambiguity.** Several letters joined by ``or`` / ``and`` / ``,`` / ``/`` / ``&`` (``A or B``, ``(A), (C)``) or
  two different parenthesised letters anywhere (``(A) ... (C)``) score 0.0 whatever the ground truth.
* **Ground truth a letter** (``B``, ``(B)``, ``B.``): 1.0 if the predicted letter matches; or, with
  ``choices`` (the option texts, A first), if the predicted *text* equals the text of the right option.
* **Ground truth a class name / option text**: 1.0 if the normalised prediction (or the option text after a
  leading ``B.`` marker) equals the normalised ground truth; or, with ``choices``, if the predicted letter's
  option text equals it.

Text normalisation (:func:`normalize_choice_text`): NFKC, casefold, punctuation -> space, whitespace
collapsed, one leading article (a/an/the) dropped. Equality only: ``"a golden retriever"`` ==
``"Golden-Retriever."``, but ``"it is a dog"`` != ``"dog"`` (no substring matching: it would reward listing
every class name).
"""

from __future__ import annotations

import re
import string
from typing import Any

from pepo.rewards.exact_match import completion_text, extract_answer, normalize_answer

__all__ = ["choice_reward", "parse_choice_letter", "is_ambiguous_choice", "normalize_choice_text", "choice_match"]

_WRAPPERS = re.compile(r"\\(?:text|textbf|mathrm|mathbf|mbox)\s*\{([^{}]*)\}")
_PREFIX = re.compile(
    r"^(?:the\s+)?(?:final\s+|correct\s+|best\s+|right\s+)?(?:answer|option|choice)\b(?:\s+is\b)?\s*[:：=\-]?\s*",
    re.IGNORECASE,
)
_LETTER_ONLY = re.compile(r"[(\[]?([A-Za-z])[)\]]?[.:)]?")
_LETTER_LEAD = re.compile(r"(?:[(\[]([A-Za-z])[)\]]|([A-Z])[.:)])\s+(\S.*)", re.DOTALL)
_BARE_LEAD = re.compile(r"([A-Z])\b(?![.'’-]\w)")
_CONNECTOR = r"\s*(?:,|/|&|\bor\b|\band\b)\s*"
# Uppercase letters joined by a connector anywhere ("I think A or B"); any case when that is the whole text.
_AMBIGUOUS = re.compile(rf"(?<![A-Za-z])[(\[]?[A-Z][)\]]?{_CONNECTOR}[(\[]?[A-Z](?![A-Za-z])")
_LETTER_LIST = re.compile(rf"[(\[]?[A-Za-z][)\]]?(?:{_CONNECTOR}[(\[]?[A-Za-z][)\]]?)+\.?", re.IGNORECASE)
_PAREN_LETTER = re.compile(r"\(([A-Z])\)")
_ARTICLES = {"a", "an", "the"}


def _clean(text: str) -> str:
    text = _WRAPPERS.sub(r"\1", text).replace("$", "").replace("**", "")
    return " ".join(text.split())


def is_ambiguous_choice(text: str) -> bool:
    """True when the text names several letters (``A or B``, ``a, c``, ``(A) ... (C)``)."""
    text = _clean(text)
    return bool(
        _LETTER_LIST.fullmatch(text)
        or _AMBIGUOUS.search(text)
        or len(set(_PAREN_LETTER.findall(text))) > 1
    )


def _strip_prefixes(text: str) -> tuple[str, bool]:
    stripped = False
    for _ in range(3):  # "Answer: Option (B)", "The correct answer is choice B"
        new = _PREFIX.sub("", text, count=1)
        if new == text:
            break
        text, stripped = new, True
    return text, stripped


def _parse_letter(text: str) -> tuple[str | None, str | None]:
    """(letter, option text after a leading letter marker) of a cleaned prediction."""
    body, had_prefix = _strip_prefixes(text)
    match = _LETTER_ONLY.fullmatch(body)
    if match:
        return match.group(1).upper(), None
    match = _LETTER_LEAD.fullmatch(body)
    if match:
        return (match.group(1) or match.group(2)).upper(), match.group(3)
    if had_prefix:
        match = _BARE_LEAD.match(body)
        if match:
            return match.group(1), None
    return None, None


def parse_choice_letter(text: str) -> str | None:
    """The option letter a prediction names (uppercase), or None (no letter form, or ambiguous)."""
    text = _clean(text)
    if is_ambiguous_choice(text):
        return None
    return _parse_letter(text)[0]


def normalize_choice_text(text: str) -> str:
    """NFKC, casefold, punctuation -> space, whitespace collapsed, one leading article dropped."""
    text = normalize_answer(_clean(text))
    text = "".join(" " if (ch in string.punctuation or not (ch.isalnum() or ch.isspace())) else ch for ch in text)
    tokens = text.split()
    if len(tokens) > 1 and tokens[0] in _ARTICLES:
        tokens = tokens[1:]
    return " ".join(tokens)


def _gold_letter(gold: str) -> str | None:
    match = _LETTER_ONLY.fullmatch(_clean(gold).strip())
    return match.group(1).upper() if match else None


def _option(choices: Any, letter: str | None) -> str | None:
    if not letter or not isinstance(choices, (list, tuple)):
        return None
    index = ord(letter) - ord("A")
    return str(choices[index]) if 0 <= index < len(choices) else None


def _same_text(prediction: str, gold: str) -> bool:
    """Normalised equality where a leading article may be the class name's own word: ``the An-12`` is ``An-12``
    (normalising drops one leading article from each side, so ``An-12`` alone would become ``12``)."""
    ours, theirs = normalize_choice_text(prediction), normalize_choice_text(gold)
    if not ours or not theirs:
        return False
    plain = " ".join(normalize_answer(_clean(gold)).translate(_PUNCTUATION).split())
    return ours == theirs or ours == plain


_PUNCTUATION = str.maketrans({ch: " " for ch in string.punctuation})


def choice_match(prediction: str, gold: Any, choices: Any = None) -> bool:
    """Does the extracted prediction answer ``gold`` (a letter or an option/class text)? See module doc."""
    text = _clean(prediction)
    gold = str(gold)
    gold_letter = _gold_letter(gold)
    # A class name or option text written out is right even when it looks like several letters ("F-16A/B").
    if gold_letter is None and text and _same_text(text, gold):
        return True
    if not text or is_ambiguous_choice(text):
        return False
    letter, option_text = _parse_letter(text)
    if gold_letter is not None:
        if letter is not None:
            return letter == gold_letter
        right = _option(choices, gold_letter)
        return right is not None and normalize_choice_text(text) == normalize_choice_text(right) != ""
    target = normalize_choice_text(gold)
    if not target:
        return False
    candidates = [text] + ([option_text] if option_text else []) + [_option(choices, letter) or ""]
    return any(normalize_choice_text(c) == target for c in candidates)


def choice_reward(completions: list[Any], answer: list[Any], choices: list[Any] | None = None, **_: Any) -> list[float]:
    """1.0 when the prediction picks the ground-truth option (letter or text; see module doc), else 0.0.

    ``choices`` is the dataset column: one list of option texts per row (A first), or None.
    """
    per_row = choices if isinstance(choices, (list, tuple)) and len(choices) == len(completions) else None
    if per_row is not None and not all(c is None or isinstance(c, (list, tuple)) for c in per_row):
        per_row = None  # a single flat list of option texts shared by every row
    rewards = []
    for i, (completion, gold) in enumerate(zip(completions, answer)):
        row_choices = per_row[i] if per_row is not None else choices
        prediction = extract_answer(completion_text(completion), keep_phrase=True)
        rewards.append(float(choice_match(prediction, gold, row_choices)))
    return rewards
