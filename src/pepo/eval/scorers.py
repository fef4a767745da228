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
from pepo.rewards.exact_match import completion_text, extract_answer, normalize_answer

__all__ = ["LETTERS", "letters_in", "mathvista_score", "mathverse_score", "logicvista_score"]

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


def _chosen_option(pred: str, choices: list[str]) -> str | None:
    """The option a prediction names: its exact text, else a single valid letter, else the closest option
    text (similarity >= 0.5, MathVista's own fallback when no letter is given); None when none applies."""
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


def mathverse_score(completion: Any, row: dict) -> tuple[float, str]:
    """MathVerse testmini: ``question_type`` multi-choice (letters) or free-form (math verifier)."""
    pred = _prediction(completion)
    if str(row.get("question_type", "")).startswith("multi"):
        letters = letters_in(pred)
        truth = letters_in(str(row["answer"]))
        return float(len(letters) == 1 and letters == truth), "".join(letters)
    score = REWARDS["accuracy"](completions=[completion], answer=[str(row["answer"])])[0]
    return float(score), normalize_answer(pred)


def logicvista_score(completion: Any, row: dict) -> tuple[float, str]:
    """LogicVista: the set of predicted letters equals the ground truth's (one letter for most items)."""
    pred = set(letters_in(_prediction(completion)))
    truth = set(letters_in(str(row["answer"]).upper()))
    return float(bool(pred) and pred == truth), "".join(sorted(pred))
