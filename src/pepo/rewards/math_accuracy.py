"""Math accuracy reward: is the predicted final answer mathematically equal to the ground truth?

**Extraction: the answer contract** (:mod:`pepo.rewards.answer`, shared by every reward and scorer).
``protocol="think_answer"``: the first closed ``<answer>`` span outside the thinking; no closed span (cut
off, untagged, thinking only) -> 0.0, as the release's ``QA_Accuracy``. ``protocol="boxed"``: the content
of the *last* balanced ``\\boxed{...}`` outside the thinking; no box -> 0.0. An answer naming several
candidates (``60 or 62``, ``1 2``) -> 0.0 unless it is the ground truth's own text.

**Verifier: math-verify, not mathruler.** The paper's release grades with mathruler's ``grade_answer``
(string normalisation in the style of the MATH/PRM800K graders, then a sympy equality check on the
normalised strings). We use Hugging Face's ``math_verify`` (``parse`` + ``verify``) because it parses LaTeX
into sympy with a real grammar and compares by value, covering sets, intervals, tuples, equations
(``x = 8`` vs ``8``), ``\\pi``/radicals, percentages and units/degrees text, and mixed decimal/fraction
forms (``0.5`` vs ``\\frac{1}{2}``) that string normalisation misses or gets wrong; it is actively
maintained. Two things are layered on top of it:

* the release-style normalisation where math-verify is weak on the release's *spaced* LaTeX
  (``\\frac { 3 } { 7 }``, ``5 \\sqrt { 3 }``, ``30 ^ { \\circ }``): spaces around braces/brackets/carets
  are removed, ``\\left``/``\\right`` and ``\\!``/``\\,`` spacing dropped, a trailing length/area unit
  (``12 cm``, ``12cm^2``, ``\\text{ units}``) dropped, ``$`` delimiters re-added;
* multiple-choice ground truths (a single letter ``B``, ``(B)``, ``B.``) are graded by
  :func:`pepo.rewards.choice.choice_match` (``B``, ``(B)``, ``B.``, ``Option B``, ``answer: B``; ambiguous
  ``A or B`` -> 0), since parsing letters as sympy symbols is fragile (``Option B`` becomes a product).

If the ground truth does not parse at all, normalised string equality (``normalize_answer``) decides.

**Untrusted input.** The prediction is model output: nothing is ``eval``-ed (math-verify/sympy parse;
we never call ``eval``), and two layers keep a hostile answer from stalling training:

1. *Input bounds* (instant, in-process): a prediction longer than ``MAX_ANSWER_CHARS`` (1000), nested
   deeper than ``MAX_NESTING`` (10) brackets, with a power tower (an exponent containing ``^``, or a
   power of a group that contains ``^``), an exponent with a 5+ digit integer (``10^{100000000}``), an
   expression factorial or a factorial of a 5+ digit number (``(10^6)!``, ``100000!``, ``10!!``), or an
   unevaluated ``\\sum``/``\\prod``/``\\int``/``\\lim`` scores 0.0 without being parsed. These catch the cases
   that hang inside one C call holding the GIL (big-integer powers), which neither signals nor threads
   can interrupt (the process guard can, but only after spending the limit and possibly gigabytes).
2. *Per-verification time limit* (``timeout_seconds``, default 2.0 s, covering parse of both sides and
   the comparison). math-verify's own timeout uses ``signal.alarm`` and fails outside the main thread,
   so it is disabled (``parsing_timeout=None`` / ``timeout_seconds=None``) and the work of one reward call
   runs in a forked child process that streams one result per item back over a pipe; the parent waits
   at most ``timeout_seconds`` per item, and on expiry SIGKILLs the child (item -> 0.0) and forks a fresh
   one for the remaining items. This works from any thread, kills even C-level hangs, and leaves no
   state behind (sympy/math-verify caches filled while grading die with the child). Where ``os.fork`` is
   unavailable or fails, a daemon thread per item is joined with the same limit instead (the item
   scores 0.0 on expiry; the thread cannot be killed, which is why layer 1 exists).
   ``timeout_seconds=None`` grades in-process with no limit (layer 1 still applies).
   Cost: one ``fork`` per reward call (about 10 ms with torch imported; more for a training
   process with a large resident set, since page tables are copied), and none when every prediction
   already failed layer 1 or is empty. The child touches no CUDA state, so forking a CUDA process is safe.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import select
import signal
import threading
import time
import unicodedata
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Callable

from pepo.rewards.choice import _clean as _clean_choice
from pepo.rewards.choice import choice_match
from pepo.rewards.answer import PROTOCOLS, several_candidates
from pepo.rewards.exact_match import completion_text, extract_answer, normalize_answer

__all__ = [
    "accuracy_reward",
    "grade_math",
    "is_safe_math",
    "normalize_math",
    "plain_to_latex",
    "verify_many",
    "MAX_ANSWER_CHARS",
    "MAX_NESTING",
]

logger = logging.getLogger(__name__)

MAX_ANSWER_CHARS = 1000
MAX_NESTING = 10
_MAX_EXPONENT_DIGITS = 4
_MAX_FACTORIAL_DIGITS = 4

_OPEN, _CLOSE = "{([", "})]"
_BIG_OPERATORS = re.compile(r"\\(?:sum|prod|coprod|int|iint|iiint|oint|lim|limsup|liminf)(?![A-Za-z])")
_NUMBER_RUN = re.compile(r"\d+")
_CHOICE_GOLD = re.compile(r"[(\[]?[A-Z][)\]]?[.:)]?")  # an uppercase option letter: "B", "(B)", "B."


# ----------------------------------------------------------------------------- input bounds


def _group_end(text: str, start: int) -> int:
    """Index just past the bracket group opening at ``start`` (or len(text) if it never closes)."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] in _OPEN:
            depth += 1
        elif text[i] in _CLOSE:
            depth -= 1
            if depth == 0:
                return i + 1
    return len(text)


def _group_start(text: str, end: int) -> int:
    """Index of the bracket opening the group that closes at ``end`` (inclusive), or 0."""
    depth = 0
    for i in range(end, -1, -1):
        if text[i] in _CLOSE:
            depth += 1
        elif text[i] in _OPEN:
            depth -= 1
            if depth == 0:
                return i
    return 0


def _exponent(text: str, caret: int) -> tuple[str, int]:
    """(exponent token after the caret at ``caret``, index just past it)."""
    i = caret + 1
    while i < len(text) and text[i].isspace():
        i += 1
    if i >= len(text):
        return "", i
    if text[i] in _OPEN:
        end = _group_end(text, i)
    elif text[i] == "\\":  # a command: ^\circ, ^\prime
        match = re.match(r"\\[A-Za-z]+", text[i:])
        end = i + (len(match.group(0)) if match else 2)
    else:
        match = re.match(r"[-+]?\s*\d+(?:\.\d+)?", text[i:])
        end = i + (len(match.group(0)) if match else 1)
    return text[i:end], end


def is_safe_math(text: str) -> bool:
    """The cheap input bounds of layer 1 (module doc): False for anything too big/deep/explosive to parse."""
    if len(text) > MAX_ANSWER_CHARS:
        return False
    text = text.replace("**", "^")
    depth = 0
    for ch in text:
        if ch in _OPEN:
            depth += 1
            if depth > MAX_NESTING:
                return False
        elif ch in _CLOSE:
            depth -= 1
    if _BIG_OPERATORS.search(text) or "!!" in text.replace(" ", ""):
        return False
    for i, ch in enumerate(text):
        if ch == "^":
            exponent, end = _exponent(text, i)
            if "^" in exponent or "!" in exponent or _BIG_OPERATORS.search(exponent):
                return False
            if text[end:].lstrip().startswith("^"):
                return False  # a^b^c
            if any(len(run) > _MAX_EXPONENT_DIGITS for run in _NUMBER_RUN.findall(exponent)):
                return False
            j = i - 1
            while j >= 0 and text[j].isspace():
                j -= 1
            if j >= 0 and text[j] in _CLOSE and "^" in text[_group_start(text, j) : j]:
                return False  # (a^b)^c
        elif ch == "!" and not text[i + 1 : i + 2] == "=":  # factorial (not "!=")
            j = i - 1
            while j >= 0 and text[j].isspace():
                j -= 1
            if j >= 0 and text[j] in _CLOSE:
                return False  # (10^6)!
            run = re.search(r"\d+$", text[: j + 1])
            if run and len(run.group(0)) > _MAX_FACTORIAL_DIGITS:
                return False
    return True


# ----------------------------------------------------------------------------- normalisation

_SPACE_AROUND = re.compile(r"\s*([{}\[\]^_])\s*")
_CMD_SPACE = re.compile(r"(\\[A-Za-z]+)\s+(?=[{\[])")
_LEFT_RIGHT = re.compile(r"\\(?:left|right|big|Big|bigg|Bigg)(?![A-Za-z])\s*")
_THIN_SPACES = re.compile(r"\\[,;:! ]|~")
_UNITS = (
    r"(?:mm|cm|dm|km|m|in|inch(?:es)?|ft|feet|foot|yd|yards?|mi|miles?|units?|met(?:er|re)s?|"
    r"(?:centi|milli|kilo)met(?:er|re)s?|lit(?:er|re)s?|ml|millilit(?:er|re)s?)"
)
# A length/area/volume unit ending the answer ("12 cm", "12cm^2", "5\sqrt{3} \text{ units}"): math-verify
# reads plain-text units as variables (12*c*m**2), the release's grader strips them.
_TRAILING_UNIT = re.compile(
    rf"(?:(?<=[\d}})])|(?<=\\pi))\s*(?:\\(?:text|mathrm|mbox)\{{\s*)?(?:square\s+|sq\.?\s*|cubic\s+)?{_UNITS}\s*\}}?"
    r"\s*(?:\^\s*\{?\s*[23]\s*\}?|[²³])?\s*$"
)


# Plain-text and Unicode math -> LaTeX (how models write answers: "21 sqrt(3)", "21√3", "10π", "60°").
_SUPERSCRIPTS = {"²": "^2", "³": "^3", "¹": "^1"}
_SYMBOLS = {
    "\u2212": "-", "×": " \\cdot ", "·": " \\cdot ", "⋅": " \\cdot ", "∙": " \\cdot ", "÷": "/", "⁄": "/",
    "π": " \\pi ", "°": "^\\circ ", "∠": "\\angle ", "≅": "\\cong ", "≤": "\\le ", "≥": "\\ge ",
    "≠": "\\ne ", "∞": "\\infty ",
}
_WORD_PI = re.compile(r"(?<![A-Za-z\\])pi(?![A-Za-z])")
_ROOT = re.compile(r"(?<![A-Za-z\\])sqrt(?![A-Za-z])\s*|√\s*|∛\s*")
_ROOT_ARGUMENT = re.compile(r"\d+(?:\.\d+)?|[A-Za-z]|\\pi(?![A-Za-z])")
_THOUSANDS = re.compile(r"(?<![\d.,])\d{1,3}(?:,\d{3})+(?![\d,])")


def _roots_to_latex(text: str) -> str:
    """``sqrt(10)``, ``sqrt 3``, ``√(10)``, ``√3``, ``∛8`` -> ``\\sqrt{10}``, ``\\sqrt{3}``, ``\\sqrt[3]{8}``.

    The argument is a bracket group (its content, matched to the closing bracket), else one number,
    letter or ``\\pi``; a root sign with no argument is left alone (and fails to parse).
    """
    out, i = [], 0
    for match in _ROOT.finditer(text):
        if match.start() < i:
            continue
        command = "\\sqrt[3]" if match.group(0).startswith("∛") else "\\sqrt"
        j = match.end()
        if j < len(text) and text[j] in "({[":
            end = _group_end(text, j)
            argument = text[j + 1 : end - 1] if end <= len(text) and text[end - 1] in ")}]" else None
        else:
            arg = _ROOT_ARGUMENT.match(text, j)
            argument, end = (arg.group(0), arg.end()) if arg else (None, j)
        if argument is None:
            continue
        out.append(text[i : match.start()] + f"{command}{{{argument}}}")
        i = end
    out.append(text[i:])
    return "".join(out)


def plain_to_latex(text: str) -> str:
    """Plain-text / Unicode math as LaTeX: roots, pi, degree signs, operators, superscripts, thousands separators.

    ``21 sqrt(3)`` -> ``21 \\sqrt{3}``, ``3√2`` -> ``3\\sqrt{2}``, ``2π/3`` -> ``2 \\pi /3``, ``60°`` ->
    ``60^\\circ``, ``1,153`` -> ``1153``, ``y²`` -> ``y^2``; LaTeX already in the text is kept as it is.
    """
    for sup, power in _SUPERSCRIPTS.items():
        text = text.replace(sup, power)
    for symbol, latex in _SYMBOLS.items():
        text = text.replace(symbol, latex)
    text = _WORD_PI.sub(r" \\pi ", text)
    for _ in range(MAX_NESTING + 1):  # one pass per level of roots inside roots ("√(2+√3)")
        rewritten = _roots_to_latex(text)
        if rewritten == text:
            break
        text = rewritten
    return _THOUSANDS.sub(lambda m: m.group(0).replace(",", ""), text)


def normalize_math(text: str) -> str:
    """Release-style cleanup of (spaced) LaTeX before math-verify; returns ``$...$``-wrapped text.

    Plain-text and Unicode math (:func:`plain_to_latex`) is rewritten as LaTeX first.
    """
    text = plain_to_latex(text.strip()).strip().rstrip(".。").strip()  # "\\[g(x)=(x+4)^2-5\\]." ends a sentence
    for pair in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if text.startswith(pair[0]) and text.endswith(pair[1]) and len(text) > len(pair[0]) + len(pair[1]):
            text = text[len(pair[0]) : -len(pair[1])].strip()
            break
    text = _THIN_SPACES.sub(" ", text)
    text = _LEFT_RIGHT.sub("", text)
    text = _CMD_SPACE.sub(r"\1", text)  # "\frac {" -> "\frac{", "\sqrt [" -> "\sqrt["
    text = _SPACE_AROUND.sub(r"\1", text)  # "{ 3 } { 7 }" -> "{3}{7}", "30 ^ { \circ }" -> "30^{\circ}"
    text = text.replace("$", " ").strip()
    text = _TRAILING_UNIT.sub("", text).strip() or text
    return f"${text}$"


# ----------------------------------------------------------------------------- grading


def _math_verify():
    try:
        import math_verify
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "accuracy_reward needs math-verify: pip install 'math-verify>=0.9' (it brings sympy and latex2sympy2)."
        ) from exc
    return math_verify


_PROSE = re.compile(r"[A-Za-z]{2,}\s+[A-Za-z]{2,}")
_COMMANDS = re.compile(r"\\(?:text|mathrm|mbox)\s*\{[^{}]*\}|\\[A-Za-z]+")


def _parse(math_verify, text: str) -> list:
    """math-verify parse of normalised ``$..$`` text; prose ("The area is 12 cm") goes raw first, where
    math-verify's own extraction finds the final number instead of reading the words as variables."""
    normalized = normalize_math(text)
    attempts = [normalized, text]
    if _PROSE.search(_COMMANDS.sub(" ", normalized)):  # words left after units are dropped
        attempts.reverse()
    for attempt in attempts:
        parsed = math_verify.parse(attempt, parsing_timeout=None)
        if parsed:
            return parsed
    return []


# Gold answers that are statements in words or symbols ("A D and B E", "\\angle 1 \\cong \\angle 4",
# "not enough information"): math-verify would read them as a product of symbols or take their last number
# ("\\angle 2 \\cong \\angle 4" parses to 4), so they are compared as text with spacing removed.
_STATEMENT_COMMANDS = re.compile(r"\\(?:angle|cong|parallel|perp|triangle|overline|odot|widehat|sim|square)(?![A-Za-z])")
_WORD = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{3,}(?![A-Za-z])")
_MATH_WORDS = {"sqrt", "sin", "cos", "tan", "cot", "sec", "csc", "log", "exp", "frac"}
# A decimal approximation, possibly with a unit or degree sign left after normalisation: "36.37", "$14.510$".
_DECIMAL = re.compile(r"-?\d+\.(\d{2,})")
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\\circ|\s*(?:degrees?|deg)\b")


# A named quantity before the value in a gold answer ("Area $=113.1 \\mathrm{~cm}^{2}$", MathVerse): the value is
# the answer (a one-letter name such as "x = 8" stays an equation for math-verify, which handles it).
_LABEL = re.compile(r"^\s*\$*\s*(?:\\mathrm\s*\{\s*)?[A-Za-z][A-Za-z.]*[A-Za-z.](?:\s+[A-Za-z.]+)*\s*\}?\s*\$*\s*=\s*\$*")


def _is_statement(gold: str) -> bool:
    if _STATEMENT_COMMANDS.search(gold):
        return True
    text = _COMMANDS.sub(" ", normalize_math(gold))  # a trailing unit ("cubic units") is not a word of the answer
    return any(word.lower() not in _MATH_WORDS for word in _WORD.findall(text))


def _statement_key(text: str) -> str:
    text = plain_to_latex(unicodedata.normalize("NFKC", text)).casefold().replace("$", "")
    return re.sub(r"\s+", "", text).rstrip(".。")


def _decimal_places(prediction: str) -> tuple[Decimal, int] | None:
    """(value, places) when the normalised prediction is a decimal with 2+ places, else None."""
    text = _DEGREES.sub("", normalize_math(prediction)[1:-1]).strip()
    match = _DECIMAL.fullmatch(text)
    return (Decimal(text), len(match.group(1))) if match else None


def _rounds_to(value: Any, decimal: Decimal, places: int) -> bool:
    """Whether the real number ``value`` (a sympy expression) rounded half-up to ``places`` is ``decimal``."""
    import sympy

    if not isinstance(value, sympy.Expr) or not value.is_number or value.free_symbols:
        return False
    approx = sympy.N(value, 40)
    if not approx.is_real:
        return False
    rounded = Decimal(str(approx)).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
    return rounded == decimal


@functools.lru_cache(maxsize=4096)
def _parse_gold(gold: str) -> tuple:
    """The parse of a ground truth, kept: a group's G completions share it (in a forked grader the cache
    lives only as long as the child)."""
    return tuple(_parse(_math_verify(), gold))


def grade_math(prediction: str, gold: str) -> bool:
    """Unguarded grading of one extracted prediction against one ground truth (no time limit).

    Applies the input bounds, the choice-letter route and the string fallback described in the module doc,
    and three rules math-verify lacks:

    * a gold *statement* (``A D and B E``, ``\\angle 1 \\cong \\angle 4``) is compared as text, with case,
      spacing and the Unicode ``∠``/``≅`` forms normalised;
    * a gold *equation* whose left side is not a lone variable (``a + b = 90``) needs an equation: the bare
      right side ``90`` is not that answer (``x = 8`` vs ``8`` stays right);
    * a *decimal approximation* with 2+ places of an exact gold (``36.37`` for ``21\\sqrt{3}``,
      ``0.429`` for ``\\frac{3}{7}``) is right when the gold value rounds (half up) to exactly that decimal.
    """
    prediction, gold = prediction.strip(), gold.strip()
    if not prediction or not gold or not is_safe_math(prediction) or not is_safe_math(plain_to_latex(prediction)):
        return False
    if several_candidates(prediction) and normalize_answer(prediction) != normalize_answer(gold):
        return False  # "60 or 62": a hedge answers nothing
    if _CHOICE_GOLD.fullmatch(_clean_choice(gold)):
        return choice_match(prediction, gold)
    if normalize_answer(_clean_choice(prediction)) == normalize_answer(_clean_choice(gold)):
        return True
    gold = _LABEL.sub("", gold, count=1) or gold  # "Area $=9 \\pi \\mathrm{cm}^{2}$" -> "9 \\pi \\mathrm{cm}^{2}$"
    if _is_statement(gold):
        return _statement_key(prediction) == _statement_key(gold)
    if not is_safe_math(gold):
        return False
    math_verify = _math_verify()
    gold_parsed = list(_parse_gold(gold))
    if not gold_parsed:
        return False
    pred_parsed = _parse(math_verify, prediction)
    if not pred_parsed:
        return False
    import sympy

    truth, guess = gold_parsed[0], pred_parsed[0]
    if isinstance(truth, sympy.Equality) and not isinstance(truth.lhs, sympy.Symbol) \
            and not isinstance(guess, sympy.core.relational.Relational):
        return False
    if math_verify.verify(gold_parsed, pred_parsed, timeout_seconds=None):
        return True
    approximation = _decimal_places(prediction)
    return approximation is not None and _rounds_to(truth, *approximation)


def _safe_grade(prediction: str, gold: str) -> bool:
    try:
        return grade_math(prediction, gold)
    except ImportError:
        raise
    except Exception:  # sympy can raise anything (RecursionError, MemoryError, ...): fail closed
        return False


class _SilenceNoTimeoutWarning(logging.Filter):
    """math-verify warns once per process that its timeout is off; here it is replaced, not missing."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


_warm_lock = threading.Lock()
_warmed = False


def _warm_up() -> None:
    """Import math-verify and load its LaTeX grammar in the parent once, so forked children start warm.

    Process-wide state is limited to the import itself and a log filter; no grading result is kept.
    """
    global _warmed
    with _warm_lock:
        if _warmed:
            return
        math_verify = _math_verify()
        for name in ("math_verify.parser", "math_verify.grader"):
            log = logging.getLogger(name)
            if not any(isinstance(f, _SilenceNoTimeoutWarning) for f in log.filters):
                log.addFilter(_SilenceNoTimeoutWarning())
        math_verify.verify(_parse(math_verify, "\\frac{1}{2}"), _parse(math_verify, "0.5"), timeout_seconds=None)
        # A decimal against an irrational value costs ~1.5 s the first time (sympy's numeric machinery); paid
        # here once, not in every forked child, where it would eat the per-item time limit.
        math_verify.verify(_parse(math_verify, "\\pi"), _parse(math_verify, "3.14"), timeout_seconds=None)
        _warmed = True


def _forked_batch(pairs: list[tuple[str, str]], timeout: float) -> list[bool]:
    results: list[bool] = []
    while len(results) < len(pairs):
        start = len(results)
        read_fd, write_fd = os.pipe()
        try:
            pid = os.fork()
        except OSError:
            os.close(read_fd)
            os.close(write_fd)
            raise
        if pid == 0:  # child: grade pairs[start:], one byte per item, then leave without cleanup
            try:
                os.close(read_fd)
                for prediction, gold in pairs[start:]:
                    os.write(write_fd, b"1" if _safe_grade(prediction, gold) else b"0")
            finally:
                os._exit(0)
        os.close(write_fd)
        poller = select.poll()  # not select.select: no FD_SETSIZE limit in processes with many open files
        poller.register(read_fd, select.POLLIN)
        try:
            while len(results) < len(pairs):
                ready = poller.poll(timeout * 1000.0)
                byte = os.read(read_fd, 1) if ready else b""
                if byte in (b"0", b"1"):
                    results.append(byte == b"1")
                    continue
                why = "timed out" if not ready else "crashed"
                logger.warning(
                    "accuracy_reward: verification %s (item %d, limit %.1fs): scored 0.0; prediction starts %r",
                    why, len(results), timeout, pairs[len(results)][0][:80],
                )
                results.append(False)
                break
        finally:
            os.close(read_fd)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)
    return results


def _threaded_batch(pairs: list[tuple[str, str]], timeout: float) -> list[bool]:
    results = []
    for prediction, gold in pairs:
        box: list[bool] = []
        worker = threading.Thread(target=lambda p=prediction, g=gold: box.append(_safe_grade(p, g)), daemon=True)
        worker.start()
        worker.join(timeout)
        if worker.is_alive() or not box:
            logger.warning("accuracy_reward: verification timed out (thread guard): scored 0.0")
        results.append(bool(box and box[0]))
    return results


def verify_many(pairs: list[tuple[str, str]], timeout_seconds: float | None = 2.0) -> list[bool]:
    """Grade ``(prediction, gold)`` pairs (already extracted) with the two-layer guard of the module doc."""
    # Layer 1 first, in-process: hostile predictions never reach a parser (and never cost a fork).
    todo = [i for i, (p, g) in enumerate(pairs) if p.strip() and g.strip() and is_safe_math(p.strip())]
    results = [False] * len(pairs)
    if not todo:
        return results
    _warm_up()
    subset = [pairs[i] for i in todo]
    runner: Callable[[list[tuple[str, str]], float], list[bool]]
    if timeout_seconds is None or timeout_seconds <= 0:
        graded = [_safe_grade(p, g) for p, g in subset]
    else:
        runner = _forked_batch if hasattr(os, "fork") and hasattr(select, "poll") else _threaded_batch
        try:
            graded = runner(subset, float(timeout_seconds))
        except OSError:  # fork/pipe refused (e.g. out of processes): degrade to the thread guard
            graded = _threaded_batch(subset, float(timeout_seconds))
    for i, ok in zip(todo, graded):
        results[i] = ok
    return results


def _extract(text: str, protocol: str) -> str:
    return extract_answer(text, protocol)


def accuracy_reward(
    completions: list[Any],
    answer: list[Any],
    protocol: str = "think_answer",
    timeout_seconds: float | None = 2.0,
    **_: Any,
) -> list[float]:
    """1.0 when the extracted final answer equals the ground truth ``answer`` mathematically, else 0.0.

    ``protocol``: "think_answer" (first ``<answer>`` span) or "boxed" (last ``\\boxed{}``).
    ``timeout_seconds``: limit per verification (see module doc); None disables the time guard.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"accuracy_reward: unknown protocol {protocol!r}; choose from {PROTOCOLS}.")
    started = time.monotonic()
    pairs = [(_extract(completion_text(c), protocol), "" if a is None else str(a)) for c, a in zip(completions, answer)]
    rewards = [float(ok) for ok in verify_many(pairs, timeout_seconds)]
    logger.debug("accuracy_reward: %d items in %.3fs", len(rewards), time.monotonic() - started)
    return rewards
