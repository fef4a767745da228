"""Benchmark-specific answer scoring (rule-based; no LLM judge). Each returns (score in {0, 1}, extracted).

* MathVista: multiple-choice answers are mapped to an option (a letter, or the option text closest
  to the prediction); free-form answers are compared by the item's ``answer_type`` (integer, float
  rounded to ``precision``, text, list).
* MathVerse: multiple-choice items by letter; free-form items with the math verifier.
* LogicVista: answers are one or more letters; a prediction is correct when its set of letters
  equals the ground truth's.
"""

from __future__ import annotations

import ast
import difflib
import re
from typing import Any

from pepo.rewards import REWARDS
from pepo.rewards.choice import parse_choice_letter
from pepo.rewards.exact_match import completion_text, extract_answer, normalize_answer

__all__ = ["LETTERS", "letters_in", "question_choices", "mathvista_score", "mathverse_score", "logicvista_score"]

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_LETTER_TOKEN = re.compile(r"(?<![A-Za-z])\(?([A-Z])\)?(?![A-Za-z])")
_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")


def letters_in(text: str) -> list[str]:
    """Option letters named in ``text`` (``B``, ``(B)``, ``A, C``), in order, without repeats."""
    seen: list[str] = []
    for letter in _LETTER_TOKEN.findall(text):
        if letter not in seen:
            seen.append(letter)
    return seen


def _prediction(completion: Any) -> str:
    return extract_answer(completion_text(completion))


def _first_number(text: str) -> float | None:
    match = _NUMBER.search(text.replace(" ", ""))
    return float(match.group().replace(",", "")) if match else None


_LEADING_MARKER = re.compile(r"\(?([A-Z])[).:]\s*(\S.*)", re.DOTALL)


def _marked_option(pred: str, choices: list[str]) -> int | None:
    """Index of the option a prediction names as ``(B) option text`` / ``B. option text`` (letter and text agree)."""
    match = _LEADING_MARKER.fullmatch(pred.strip())
    if not match:
        return None
    index = LETTERS.index(match.group(1))
    if index < len(choices) and normalize_answer(match.group(2)) == normalize_answer(choices[index]):
        return index
    return None


def _chosen_option(pred: str, choices: list[str]) -> str | None:
    """The option a prediction names, tried in this order: its exact text (case and all: MathVista has options
    such as ``(b)``), ``(B) text`` with letter and text agreeing, a letter form alone (``B``, ``(B)``, ``B.``,
    ``The answer is B``), the option text up to case and spacing, a single letter token, else the closest
    option text (similarity >= 0.5, MathVista's own fallback when no letter is given); None when none applies."""
    stripped = pred.strip()
    for choice in choices:
        if choice.strip() == stripped:
            return choice
    marked = _marked_option(pred, choices)
    if marked is not None:
        return choices[marked]
    letter = parse_choice_letter(pred)
    if letter is not None:
        index = LETTERS.index(letter)
        return choices[index] if index < len(choices) else None
    normalized = normalize_answer(pred)
    for choice in choices:
        if normalize_answer(choice) == normalized:
            return choice
    letters = letters_in(pred)
    if len(letters) == 1:
        index = LETTERS.index(letters[0])
        return choices[index] if index < len(choices) else None
    if letters:  # several letters: ambiguous
        return None
    ratio = lambda c: difflib.SequenceMatcher(None, normalized, normalize_answer(c)).ratio()  # noqa: E731
    best = max(choices, key=ratio)
    return best if ratio(best) >= 0.5 else None


def mathvista_score(completion: Any, row: dict) -> tuple[float, str]:
    """MathVista testmini: ``answer``, ``question_type`` (multi_choice / free_form), ``choices``,
    ``answer_type`` (integer / float / text / list), ``precision``."""
    pred = _prediction(completion)
    answer = str(row["answer"])
    choices = row.get("choices") or []
    if row.get("question_type") == "multi_choice" and choices:
        chosen = _chosen_option(pred, [str(c) for c in choices])
        if chosen is None:
            return 0.0, pred
        return float(normalize_answer(chosen) == normalize_answer(answer)), chosen
    kind = row.get("answer_type", "text")
    if kind in ("integer", "float"):
        value, truth = _first_number(pred), _first_number(answer)
        if value is None or truth is None:
            return 0.0, pred
        if kind == "integer":
            return float(round(value) == round(truth) and value == int(value)), str(value)
        digits = int(row.get("precision") or 2)
        return float(round(value, digits) == round(truth, digits)), str(round(value, digits))
    if kind == "list":
        try:
            got, want = ast.literal_eval(pred), ast.literal_eval(answer)
        except (ValueError, SyntaxError, MemoryError, RecursionError):  # literal_eval never executes code
            return 0.0, pred
        return float(list(got) == list(want)) if isinstance(got, (list, tuple)) else 0.0, pred
    return float(normalize_answer(pred) == normalize_answer(answer)), normalize_answer(pred)


_CHOICES_HEAD = re.compile(r"\bChoices?\s*:\s*\n")
_CHOICE_LINE = re.compile(r"([A-H])\s*[:.]\s*(.*?)\s*")


def question_choices(question: str) -> list[str]:
    """The options MathVerse writes inside its question (``Choices:\\nA:40°\\nB:60°``, ``Choice:\\nA. True``),
    A first; a line that starts no new option continues the previous one. ``[]`` when there are none."""
    head = _CHOICES_HEAD.search(question)
    options: list[str] = []
    for line in question[head.end():].splitlines() if head else []:
        match = _CHOICE_LINE.fullmatch(line.strip())
        if match and match.group(1) == LETTERS[len(options)]:
            options.append(match.group(2))
        elif options:
            options[-1] = f"{options[-1]} {line.strip()}".strip()
    return options


def _named_letters(pred: str, choices: list[str]) -> list[str]:
    """The letters a prediction names: an option's exact text first (``090^\\circ T`` holds no letter), else
    its letters."""
    normalized = normalize_answer(pred)
    for i, choice in enumerate(choices):
        if choice and normalize_answer(choice) == normalized:
            return [LETTERS[i]]
    marked = _marked_option(pred, choices)
    return [LETTERS[marked]] if marked is not None else letters_in(pred)


def mathverse_score(completion: Any, row: dict) -> tuple[float, str]:
    """MathVerse testmini: ``question_type`` multi-choice or free-form (math verifier).

    Multiple choice: the predicted letters (or the option text, the options being read from ``question``)
    must equal the answer's as a set: one letter for most items, ``A\\nC`` for a few. The answer may be a
    letter, ``(C)``, or the option text itself (``False``, ``090^\\circ T``).
    """
    pred = _prediction(completion)
    if str(row.get("question_type", "")).startswith("multi"):
        choices = question_choices(str(row.get("question", "")))
        letters = _named_letters(pred, choices)
        truth = _named_letters(str(row["answer"]).strip(), choices)
        return float(bool(letters) and set(letters) == set(truth)), "".join(letters)
    answer = str(row["answer"]).replace("掳", "°")  # a mis-decoded degree sign in the published file ("118掳T")
    score = REWARDS["accuracy"](completions=[completion], answer=[answer])[0]
    return float(score), normalize_answer(pred)


_DIGIT_LABEL = re.compile(r"(?<![\d.])\(?([1-9])\)?(?!\d|\.\d)")


def logicvista_score(completion: Any, row: dict) -> tuple[float, str]:
    """LogicVista: the set of predicted labels equals the ground truth's (one letter for most items; a set such as
    ``A, C`` for a few; a number such as ``3`` where the options are numbered, "Select from 1-5")."""
    answer = str(row["answer"]).upper()
    labels = letters_in if letters_in(answer) else (lambda text: _DIGIT_LABEL.findall(text))
    pred = set(labels(_prediction(completion)))
    truth = set(labels(answer))
    return float(bool(pred) and pred == truth), "".join(sorted(pred))
