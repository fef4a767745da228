"""Benchmark-specific answer scoring (rule-based; no LLM judge). Each returns (score in {0, 1}, extracted).

All read the answer through the answer contract (:mod:`pepo.rewards.answer`): the first closed ``<answer>`` span
outside the thinking, nothing else; several candidates (``60 or 62``, ``1 2``, ``B or C``) answer nothing.

* MathVista: multiple-choice answers name an option (a letter in any case, the option's text, a letter and
  the text agreeing, else the option text closest to the prediction); free-form answers are compared by the
  item's ``answer_type`` (one integer, one float rounded to ``precision``, text, list).
* MathVerse: multiple-choice items by option (letter or option text; the options come from the row's
  ``choices``, which the MathVerse reader parses from the question); free-form items with the math verifier.
* LogicVista: answers are one or more letters (any case); the predicted set must equal the ground truth's.
"""

from __future__ import annotations

import ast
import difflib
import re
from typing import Any

from pepo.data.readers.benchmarks import mathverse_choices as question_choices
from pepo.rewards import REWARDS
from pepo.rewards.answer import LETTERS, read_choice, read_letters, several_candidates
from pepo.rewards.exact_match import completion_text, extract_answer, normalize_answer

__all__ = ["LETTERS", "letters_in", "question_choices", "row_choices", "mathvista_score", "mathverse_score",
           "logicvista_score"]

_LETTER_TOKEN = re.compile(r"(?<![A-Za-z])\(?([A-Z])\)?(?![A-Za-z])")
_NUMBER = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?")
_MARKER = re.compile(r"\s*[(\[]?[A-Za-z][)\].:]")


def letters_in(text: str) -> list[str]:
    """Option letters named in ``text`` (``B``, ``(B)``, ``A, C``), in order, without repeats (used to tell
    single-letter items from several-letter ones; predictions are read with :func:`read_choice`)."""
    seen: list[str] = []
    for letter in _LETTER_TOKEN.findall(text):
        if letter not in seen:
            seen.append(letter)
    return seen


def _prediction(completion: Any) -> str:
    return extract_answer(completion_text(completion))


def _one_number(text: str) -> float | None:
    """The value when the text holds exactly one number (``1,153`` is one; ``1 2`` and ``60 or 62`` are two)."""
    numbers = _NUMBER.findall(text)
    return float(numbers[0].replace(",", "")) if len(numbers) == 1 else None


def _chosen_option(pred: str, choices: list[str]) -> int | None:
    """The option a MathVista prediction names (:func:`read_choice`), else, for a prediction that is no letter
    form, the closest option text (similarity >= 0.5, MathVista's own fallback when no letter is given)."""
    index = read_choice(pred, choices)
    if index is not None or not pred.strip() or several_candidates(pred) or _MARKER.match(pred):
        return index
    normalized = normalize_answer(pred)
    ratio = lambda c: difflib.SequenceMatcher(None, normalized, normalize_answer(c)).ratio()  # noqa: E731
    best = max(range(len(choices)), key=lambda i: ratio(choices[i]))
    return best if ratio(choices[best]) >= 0.5 else None


def mathvista_score(completion: Any, row: dict) -> tuple[float, str]:
    """MathVista testmini: ``answer``, ``question_type`` (multi_choice / free_form), ``choices``,
    ``answer_type`` (integer / float / text / list), ``precision``."""
    pred = _prediction(completion)
    answer = str(row["answer"])
    choices = row.get("choices") or []
    if row.get("question_type") == "multi_choice" and choices:
        options = [str(c) for c in choices]
        chosen = _chosen_option(pred, options)
        if chosen is None:
            return 0.0, pred
        return float(normalize_answer(options[chosen]) == normalize_answer(answer)), options[chosen]
    kind = row.get("answer_type", "text")
    if kind in ("integer", "float"):
        value, truth = _one_number(pred), _one_number(answer)
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
    return float(bool(pred) and normalize_answer(pred) == normalize_answer(answer)), normalize_answer(pred)


def row_choices(row: dict) -> list[str]:
    """A MathVerse row's options, A first: its ``choices`` column (the reader fills it from a ``choices`` field
    or from the question), else parsed from ``question`` or from the prompt's text (hub rows)."""
    choices = row.get("choices")
    if isinstance(choices, (list, tuple)) and choices:
        return [str(c) for c in choices]
    found = question_choices(str(row.get("question") or ""))
    if not found and isinstance(row.get("prompt"), list):
        texts = [part.get("text") or "" for message in row["prompt"] if isinstance(message, dict)
                 for part in (message.get("content") if isinstance(message.get("content"), list) else [])
                 if isinstance(part, dict)]
        found = question_choices("\n".join(texts))
    return found


def _gold_options(answer: str, choices: list[str]) -> set[int] | None:
    """The option(s) a MathVerse ground truth names: letters (``D``, ``(C)``, ``A\\nC``) or an option's text
    (``False``, ``090^\\circ T``); None when it names none."""
    for i, option in enumerate(choices):
        if normalize_answer(option) == normalize_answer(answer):
            return {i}
    letters = read_letters(answer)
    return {LETTERS.index(x) for x in letters} if letters else None


def mathverse_score(completion: Any, row: dict) -> tuple[float, str]:
    """MathVerse testmini: ``question_type`` multi-choice or free-form (math verifier).

    Multiple choice: the predicted option (a letter in any case, ``(B) text`` with letter and text agreeing, or
    the option's text; :func:`row_choices` gives the options) must be the answer's; for the few several-letter
    answers (``A\\nC``) the predicted letter set must equal it. The answer may be a letter, ``(C)``, or the
    option's text itself (``False``, ``090^\\circ T``).
    """
    pred = _prediction(completion)
    if str(row.get("question_type", "")).startswith("multi"):
        answer = str(row["answer"]).strip()
        choices = row_choices(row)
        truth = _gold_options(answer, choices)
        if truth is None:  # a ground truth that names no option: its text must be given
            return float(bool(pred) and normalize_answer(pred) == normalize_answer(answer)), pred
        if len(truth) > 1:
            letters = read_letters(pred)
            got = {LETTERS.index(x) for x in letters} if letters else set()
        else:
            index = read_choice(pred, choices)
            got = {index} if index is not None else set()
        return float(bool(got) and got == truth), "".join(LETTERS[i] for i in sorted(got))
    answer = str(row["answer"]).replace("掳", "°")  # a mis-decoded degree sign in the published file ("118掳T")
    score = REWARDS["accuracy"](completions=[completion], answer=[answer])[0]
    return float(score), normalize_answer(pred)


_DIGIT_LABEL = re.compile(r"[(\[]?([1-9])[)\]]?\.?")


def logicvista_score(completion: Any, row: dict) -> tuple[float, str]:
    """LogicVista: the predicted labels equal the ground truth's: one letter (any case, ``(c)``, ``C.``) for most
    items; a set such as ``A, C`` for a few; a number such as ``3`` where the options are numbered."""
    answer = str(row["answer"]).strip()
    pred = _prediction(completion)
    digit = _DIGIT_LABEL.fullmatch(answer)
    if digit:
        got = _DIGIT_LABEL.fullmatch(pred.strip())
        return float(bool(got) and got.group(1) == digit.group(1)), got.group(1) if got else ""
    truth = read_letters(answer) or []
    if len(truth) == 1:
        index = read_choice(pred)
        letter = LETTERS[index] if index is not None else ""
        return float(letter == truth[0]), letter
    letters = read_letters(pred) or []
    return float(bool(letters) and letters == truth), "".join(letters)
