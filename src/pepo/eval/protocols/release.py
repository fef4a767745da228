"""``--protocol release``: the verdicts of the paper's release scripts (ms-swift plugin, commit 2b1e788), rule by rule.

Written from the rules of ``src/pepo/evaluation/evaluate_{geometry3k,mathvista,mathverse,logicvista}.py`` and
``src/pepo/rewards/plugin.py`` (facts, not their code). Their grader is mathruler's ``grade_answer``, an
optional dependency here (``pip install mathruler pylatexenc``). These rules are reproduced *including* the
places where they are wrong (the default ``pepo`` protocol is the correct one); each is named below.

**Extraction** (Geometry3K, MathVerse, LogicVista): the first ``<answer>..</answer>`` (tags case-insensitive,
spaces allowed inside them) when its content is not blank; else the text after the first ``<answer>``; else the
*whole response, thinking included*. Then a ``\\boxed{..}`` that ends the text is unwrapped (greedy: from the
first box to the last brace), one trailing ``.``/``。`` dropped, ``π`` -> ``\\pi``. MathVista: the same order, but
it only removes one ``$..$`` pair and unwraps the ending box (no full stop, no ``π``).

**Per benchmark**

* Geometry3K: ``grade_answer(pred, gold)``, both lowercased and stripped.
* MathVista: multiple choice: the first ``(x)`` in the text, uppercased, names an option when it is in range
  (the letter test is case-sensitive: ``b`` or ``B.`` is not a letter here); otherwise the option with the
  smallest Levenshtein distance to the text (an empty answer is the shortest option). Integer answers:
  ``str(int(float(x)))`` (``60.5`` -> ``60``: truncation); float: ``str(round(float(x), precision))``; a text
  that is no number fails. Then ``grade_answer(gold, prediction)`` (arguments in this order).
* MathVerse (multiple-choice items by default): the options are only those of a ``choices`` *field*; the
  published files and the hub copy have none, so the prediction is the extracted text itself, compared with
  the gold letter by ``grade_answer`` (lowercased): ``a`` is right, ``A. 40°`` or the option's text is not.
  With a ``choices`` field, the first ``(x)`` or else the *last* standalone letter picks the option.
* LogicVista (single-letter items by default): the *last* standalone letter of the text, else its first letter
  (so an empty ``<answer></answer>`` reads the ``a`` of ``</answer>``: ``A``), compared case-insensitively.
* Training reward (``QA_Accuracy``, :func:`release_reward`): the first ``<answer>(.*?)</answer>`` (exact
  tags) or 0.0; both sides NFKC + casefold + whitespace collapsed + one trailing ``.``/``。`` + ``π`` -> ``\\pi``;
  ``grade_answer(gold, pred)``.

mathruler's ``grade_answer`` has its own errors that are part of the protocol: it equates different MathVista
options such as ``0.0 - 0.2`` and ``0.2 - 0.4`` (and ``049^\\circ T`` with ``090^\\circ T``).
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any, Callable, Sequence

__all__ = [
    "RELEASE_TASKS",
    "MISSING_MATHRULER",
    "release_extract",
    "mathvista_extract",
    "levenshtein",
    "release_reward",
    "release_scorer",
    "release_keep",
    "geometry3k_release",
    "mathvista_release",
    "mathverse_release",
    "logicvista_release",
]

MISSING_MATHRULER = ("--protocol release grades with mathruler, the release's grader: pip install mathruler "
                     "pylatexenc")

_TAG_SPAN = re.compile(r"<\s*answer\s*>(.*?)<\s*/\s*answer\s*>", re.IGNORECASE | re.DOTALL)
_TAG_OPEN = re.compile(r"<\s*answer\s*>", re.IGNORECASE)
_ENDING_BOX = re.compile(r"\\boxed\s*\{(.*)\}\s*$", re.DOTALL)
_REWARD_SPAN = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_PAREN_LETTER = re.compile(r"\(([a-zA-Z])\)")
_STANDALONE_LETTER = re.compile(r"\b([A-Za-z])\b")


def grade_answer(given: str, truth: str) -> bool:
    """mathruler's ``grade_answer(given, ground_truth)``; ImportError names the install command."""
    try:
        from mathruler.grader import grade_answer as mathruler_grade
    except ImportError as err:
        raise ImportError(MISSING_MATHRULER) from err
    return bool(mathruler_grade(given, truth))


def _text_of(completion: Any) -> str:
    from pepo.rewards.exact_match import completion_text

    return completion_text(completion)


def _raw_span(text: str) -> str:
    match = _TAG_SPAN.search(text)
    if match and match.group(1).strip():
        return match.group(1)
    opened = _TAG_OPEN.search(text)
    return text[opened.end():] if opened else text


def release_extract(text: str) -> str:
    """Geometry3K / MathVerse / LogicVista extraction (module doc)."""
    s = _raw_span(text).strip()
    box = _ENDING_BOX.search(s)
    if box:
        s = box.group(1).strip()
    if s and s[-1] in (".", "。"):
        s = s[:-1].strip()
    return s.replace("π", "\\pi")


def mathvista_extract(text: str) -> str:
    """MathVista extraction (module doc): span, one ``$..$`` pair removed, an ending box unwrapped."""
    s = _raw_span(text).strip()
    if len(s) >= 2 and s.startswith("$") and s.endswith("$"):
        s = s[1:-1].strip()
    return _ENDING_BOX.sub(r"\1", s).strip()


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions, each 1)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def _nearest(text: str, choices: Sequence[Any]) -> Any:
    """The first option at the smallest edit distance; the text itself when there are no options."""
    if not choices:
        return text
    distances = [levenshtein(str(text), str(c)) for c in choices]
    return choices[distances.index(min(distances))]


def _lower(text: Any) -> str:
    return str(text or "").lower().strip()


def geometry3k_release(completion: Any, row: dict) -> tuple[float, str]:
    """Geometry3K evaluation rule; ``(score, extracted)``."""
    pred = release_extract(_text_of(completion))
    try:
        ok = grade_answer(_lower(pred), _lower(row["answer"]))
    except ImportError:
        raise
    except Exception:  # the release script would stop here; one response scored 0 instead
        ok = False
    return float(ok), pred


def mathvista_release(completion: Any, row: dict) -> tuple[float, str]:
    """MathVista rule (``answer``, ``question_type``, ``choices``, ``answer_type``, ``precision``)."""
    extraction = mathvista_extract(_text_of(completion))
    prediction: str | None
    if row.get("question_type") == "multi_choice":
        choices = list(row.get("choices") or [])
        s = extraction.strip()
        letters = _PAREN_LETTER.findall(s)
        if letters:
            s = letters[0].upper()
        in_range = [chr(ord("A") + i) for i in range(len(choices))]
        prediction = str(choices[in_range.index(s)]) if s in in_range else str(_nearest(s, choices))
    elif row.get("answer_type") == "integer":
        try:
            prediction = str(int(float(extraction)))
        except (ValueError, OverflowError):
            prediction = None
    elif row.get("answer_type") == "float":
        try:
            precision = row.get("precision")
            prediction = str(round(float(extraction), int(precision) if precision is not None else 0))
        except (ValueError, OverflowError):
            prediction = None
    else:
        prediction = str(extraction).strip()
    if prediction is None:
        return 0.0, extraction
    try:
        ok = grade_answer(str(row["answer"]).strip(), prediction)
    except ImportError:
        raise
    except Exception:  # the release's safe_equal
        ok = False
    return float(ok), prediction


def _is_choice_item(row: dict) -> bool:
    kind = re.sub(r"[\s_\-]+", " ", str(row.get("question_type") or "").strip().lower())
    field = _choices_field(row)
    return kind in {"multi choice", "multichoice"} or len(field) >= 2


def _choices_field(row: dict) -> list:
    """The options the release sees: a ``choices`` field of the published item only (not parsed from text)."""
    if row.get("choices_source", "field") != "field":
        return []
    return list(row.get("choices") or [])


def mathverse_release(completion: Any, row: dict) -> tuple[float, str]:
    """MathVerse rule (``answer``, ``question_type``; ``choices`` only when the published item has the field)."""
    s = release_extract(_text_of(completion))
    prediction = s
    if _is_choice_item(row):
        choices = _choices_field(row)
        s = s.strip()
        letter = None
        paren = _PAREN_LETTER.findall(s)
        if paren:
            letter = paren[0].upper()
        else:
            standalone = _STANDALONE_LETTER.findall(s)
            if standalone:
                letter = standalone[-1].upper()
        if letter and choices and 0 <= ord(letter) - ord("A") < len(choices):
            prediction = str(choices[ord(letter) - ord("A")])
        else:
            prediction = str(_nearest(s, choices))
    else:
        prediction = s.strip()
    try:
        ok = grade_answer(_lower(prediction), _lower(str(row["answer"]).strip()))
    except ImportError:
        raise
    except Exception:
        ok = False
    return float(ok), prediction


def logicvista_release(completion: Any, row: dict) -> tuple[float, str]:
    """LogicVista rule: the last standalone letter, else the first letter; case-insensitive equality."""
    s = release_extract(_text_of(completion)).strip()
    standalone = _STANDALONE_LETTER.findall(s)
    if standalone:
        letter = standalone[-1].upper()
    else:
        first = re.search(r"[A-Za-z]", s)
        letter = first.group(0).upper() if first else ""
    return float(_lower(letter) == _lower(str(row["answer"]).strip())), letter


def _normalize_reward(text: Any) -> str:
    if text is None:
        return ""
    text = unicodedata.normalize("NFKC", str(text)).casefold()
    text = re.sub(r"\s+", " ", text).strip()
    if text.endswith(".") or text.endswith("。"):
        text = text[:-1].strip()
    return text.replace("π", "\\pi")


def release_reward(completions: list[Any], answer: list[Any], **_: Any) -> list[float]:
    """The release's training accuracy reward (``QA_Accuracy``): 0.0 without an ``<answer>`` span (module doc)."""
    rewards = []
    for completion, gold in zip(completions, answer):
        match = _REWARD_SPAN.search(_text_of(completion))
        if not match:
            rewards.append(0.0)
            continue
        try:
            ok = grade_answer(_normalize_reward(gold), _normalize_reward(match.group(1).strip()))
        except ImportError:
            raise
        except Exception:
            ok = False
        rewards.append(float(ok))
    return rewards


RELEASE_TASKS: dict[str, Callable[[Any, dict], tuple[float, str]]] = {
    "geometry3k": geometry3k_release,
    "mathvista": mathvista_release,
    "mathverse": mathverse_release,
    "logicvista": logicvista_release,
}


def release_keep(task: str, row: dict) -> bool:
    """The release's default item filter: MathVerse choice items, LogicVista single-letter answers; else all."""
    if task == "mathverse":
        return _is_choice_item(row)
    if task == "logicvista":
        return bool(re.fullmatch(r"[A-Za-z]", str(row.get("answer", "")).strip()))
    return True


def release_scorer(task: str) -> Callable[[list[Any], dict], tuple[list[float], list[str]]]:
    """``score(completions, row) -> (scores, extracted)`` under the release's rules for ``task``.

    Raises:
        ValueError: a task the release does not evaluate (the four that it does are named).
        ImportError: mathruler is missing (the message names ``pip install mathruler pylatexenc``).
    """
    if task not in RELEASE_TASKS:
        raise ValueError(f"--protocol release: the paper's release evaluates only {', '.join(RELEASE_TASKS)}; "
                         f"task {task!r} has no release protocol (use --protocol pepo).")
    grade_answer("1", "1")  # fail now, with the install command, rather than on the first response
    rule = RELEASE_TASKS[task]

    def score(completions: list[Any], row: dict) -> tuple[list[float], list[str]]:
        pairs = [rule(c, row) for c in completions]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    return score
