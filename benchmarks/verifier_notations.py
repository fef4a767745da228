"""The math verifier on how models write the real Geometry3K answers: pepo's vs the release's (mathruler).

The table is built in code from the real answers (``../shared/realdata/geometry3k/pepo_jsonl/*.jsonl``,
every distinct ``solution`` of train/val/test), never from a hand list. Each answer is parsed by a small
grammar of the spaced LaTeX those files use (numbers, ``\\sqrt``, ``\\pi``, ``\\frac``, ``+ - /``, ``:``,
implicit products, variables, powers); from the parse it is written back the ways a model writes it:

* **right** notations: compact and spaced LaTeX, ``$..$``, ``\\dfrac``, plain text (``21 sqrt(3)``,
  ``21*sqrt(3)``, ``10 pi``, ``3/7``), Unicode (``21√3``, ``√(10)``, ``10π``, ``2π/3``), a decimal value to 2
  and 3 places for irrational or non-terminating values, degree signs (``60°``, ``60^\\circ``, ``60 degrees``)
  where a problem with that answer asks for an angle or arc, units (``12 inches``, ``60 square units``)
  where a problem names them, thousands separators (``1,153``); answers the grammar does not cover
  (``A D and B E``, ``\\angle 3 \\cong \\angle Z``) get spacing / case / Unicode variants;
* **wrong** values: every number of the answer moved by one, times ten and negated (one at a time), the
  radicand changed, ``\\sqrt`` and ``\\pi`` dropped or swapped, a decimal approximation off by 0.01 / 0.1,
  and three other answers of the dataset; each written in LaTeX, plain text and Unicode. A candidate
  whose value equals the gold's (``\\sqrt{20}`` for ``2\\sqrt{5}``) is not a wrong value and is left out.

    python -m benchmarks.verifier_notations [--realdata ../shared/realdata] [--show 10]

prints the table size and, for pepo's verifier (:func:`pepo.rewards.math_accuracy.grade_math`) and for
the release's (mathruler's ``grade_answer`` after the release's answer normalisation: NFKC, casefold,
whitespace collapse, trailing ``.``/``。`` stripped, ``π`` -> ``\\pi``, called as ``grade_answer(gold,
prediction)`` as the release does), the share of right notations judged right and of wrong values
judged right. mathruler is a dev/bench extra (``pip install -e '.[dev]'``), never a runtime dependency.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import re
import sys
import time
import unicodedata
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any, Callable

import sympy

__all__ = ["Notation", "real_answers", "build_table", "parse_answer", "measure", "main"]

DEFAULT_REALDATA = Path(__file__).resolve().parents[1].parent / "shared" / "realdata"


@dataclass(frozen=True)
class Notation:
    """One labelled row: ``text`` written for ``gold``; ``right`` = the same value, else a wrong value."""

    gold: str
    text: str
    right: bool
    kind: str


def real_answers(realdata: Path) -> dict[str, list[str]]:
    """Every distinct Geometry3K answer (``solution``) of the release's JSONL -> the problem texts asking it."""
    answers: dict[str, list[str]] = {}
    for split in ("train", "val", "test"):
        path = realdata / "geometry3k" / "pepo_jsonl" / f"{split}.jsonl"
        for line in path.read_text().splitlines():
            row = json.loads(line)
            answers.setdefault(row["solution"], []).append(row["messages"][0]["content"])
    return answers


# ----------------------------------------------------------------------------- a tiny grammar of the answers

# nodes: ("num", "21") ("pi",) ("var", "y") ("sqrt", n) ("frac", n, d) ("mul", [..]) ("div", a, b)
#        ("add", [(sign, n), ..]) ("pow", base, exp) ("mixed", whole, frac)
_TOKEN = re.compile(r"\s*(\\[A-Za-z]+|\d+(?:\.\d+)?|[A-Za-z]|[{}()+\-/^:])")


class _Unparsed(ValueError):
    pass


def _tokens(text: str) -> list[str]:
    out, i = [], 0
    text = text.strip()
    while i < len(text):
        match = _TOKEN.match(text, i)
        if not match:
            raise _Unparsed(text)
        out.append(match.group(1))
        i = match.end()
        while i < len(text) and text[i].isspace():
            i += 1
    return out


class _Parser:
    def __init__(self, tokens: list[str]):
        self.t, self.i = tokens, 0

    def peek(self) -> str | None:
        return self.t[self.i] if self.i < len(self.t) else None

    def take(self, want: str | None = None) -> str:
        tok = self.peek()
        if tok is None or (want is not None and tok != want):
            raise _Unparsed(f"expected {want!r} at {self.i}")
        self.i += 1
        return tok

    def expr(self):
        terms = []
        sign = "+"
        if self.peek() == "-":
            self.take()
            sign = "-"
        terms.append((sign, self.term()))
        while self.peek() in ("+", "-"):
            sign = self.take()
            terms.append((sign, self.term()))
        return terms[0][1] if len(terms) == 1 and terms[0][0] == "+" else ("add", terms)

    def term(self):
        left = self.product()
        while self.peek() == "/":
            self.take()
            left = ("div", left, self.product())
        return left

    def product(self):
        factors = [self.power()]
        while self.peek() not in (None, "+", "-", "/", "}", ")", ":"):
            factors.append(self.power())
        if len(factors) == 2 and factors[0][0] == "num" and "." not in factors[0][1] and factors[1][0] == "frac" \
                and all(n[0] == "num" for n in factors[1][1:]) and self.peek() is None:
            return ("mixed", factors[0], factors[1])  # 4 \frac { 4 } { 11 } = 48/11
        return factors[0] if len(factors) == 1 else ("mul", factors)

    def power(self):
        base = self.atom()
        if self.peek() == "^":
            self.take()
            return ("pow", base, self.atom())
        return base

    def group(self):
        if self.peek() == "{":
            self.take("{")
            node = self.expr()
            self.take("}")
            return node
        return self.atom()

    def atom(self):
        tok = self.take()
        if re.fullmatch(r"\d+(?:\.\d+)?", tok):
            return ("num", tok)
        if tok == "\\pi":
            return ("pi",)
        if tok == "\\sqrt":
            return ("sqrt", self.group())
        if tok == "\\frac":
            return ("frac", self.group(), self.group())
        if tok in ("(", "{"):
            node = self.expr()
            self.take(")" if tok == "(" else "}")
            return node
        if re.fullmatch(r"[A-Za-z]", tok):
            return ("var", tok)
        raise _Unparsed(tok)


def parse_answer(text: str) -> list[Any] | None:
    """The answer's parse: a list of sides (two for a ratio ``a : b``), or None outside the grammar."""
    if re.search(r"(?<![\\A-Za-z])[A-Za-z]{2,}", text):  # words ("A D and B E" is not A*D*a*n*d*B*E)
        return None
    try:
        sides = []
        for part in text.split(":"):
            parser = _Parser(_tokens(part))
            node = parser.expr()
            if parser.peek() is not None:
                return None
            sides.append(node)
        return sides
    except _Unparsed:
        return None


def _value(node) -> sympy.Expr:
    kind = node[0]
    if kind == "num":
        return sympy.Rational(node[1])
    if kind == "pi":
        return sympy.pi
    if kind == "var":
        return sympy.Symbol(node[1])
    if kind == "sqrt":
        return sympy.sqrt(_value(node[1]))
    if kind in ("frac", "div"):
        return _value(node[1]) / _value(node[2])
    if kind == "mul":
        return sympy.Mul(*[_value(n) for n in node[1]])
    if kind == "add":
        return sympy.Add(*[(-1 if s == "-" else 1) * _value(n) for s, n in node[1]])
    if kind == "pow":
        return _value(node[1]) ** _value(node[2])
    if kind == "mixed":
        return _value(node[1]) + _value(node[2])
    raise ValueError(kind)


def _values(sides) -> tuple:
    return tuple(_value(s) for s in sides)


def _same(a: sympy.Expr, b: sympy.Expr) -> bool:
    """Equal values: numerically to 30 digits for numbers, by expansion for expressions in variables."""
    if a.free_symbols or b.free_symbols:
        return sympy.expand(a - b) == 0
    return abs(sympy.N(a - b, 30)) < sympy.Float("1e-20")


# ----------------------------------------------------------------------------- writing a parse back

def _simple(node) -> bool:
    """Needs no parentheses as an operand of / or a function argument."""
    return node[0] in ("num", "pi", "var", "sqrt") or (node[0] == "pow" and node[1][0] in ("num", "var"))


def _latex(node, spaced: bool = False, braces: bool = True) -> str:
    kind = node[0]
    sp = " " if spaced else ""
    if kind == "num":
        return node[1]
    if kind == "pi":
        return "\\pi"
    if kind == "var":
        return node[1]
    if kind == "sqrt":
        inner = _latex(node[1], spaced, braces)
        if not braces and node[1][0] == "num" and len(node[1][1]) == 1:  # \sqrt10 is \sqrt{1}0 in TeX
            return f"\\sqrt {inner}" if spaced else f"\\sqrt{inner}"
        return f"\\sqrt{sp}{{{sp}{inner}{sp}}}"
    if kind == "frac":
        return f"\\frac{sp}{{{sp}{_latex(node[1], spaced, braces)}{sp}}}{sp}{{{sp}{_latex(node[2], spaced, braces)}{sp}}}"
    if kind == "mixed":
        return f"{_latex(node[1])} {_latex(node[2], spaced, braces)}"
    if kind == "mul":
        parts = [_latex(n, spaced, braces) for n in node[1]]
        out = parts[0]
        for prev, part in zip(node[1], parts[1:]):
            glue = " \\cdot " if part[0].isdigit() else " " if spaced or part[0].isalpha() else ""
            out += glue + part
        return out
    if kind == "div":
        return f"{_wrap(node[1], _latex, spaced, braces)}{sp}/{sp}{_wrap(node[2], _latex, spaced, braces)}"
    if kind == "add":
        out = ""
        for i, (sign, n) in enumerate(node[1]):
            text = _latex(n, spaced, braces)
            out += (f"{sign}{text}" if sign == "-" else text) if i == 0 else f" {sign} {text}"
        return out
    if kind == "pow":
        return f"{_latex(node[1], spaced, braces)}^{_latex(node[2], spaced, braces)}"
    raise ValueError(kind)


def _wrap(node, render, *args) -> str:
    text = render(node, *args)
    return text if _simple(node) or node[0] == "frac" else f"({text})"


def _plain(node, style: str) -> str:
    """``style``: "text" (sqrt(3), pi, *), "text_space" (21 sqrt(3), 10 pi), "unicode" (√3, π)."""
    kind = node[0]
    uni = style == "unicode"
    if kind == "num":
        return node[1]
    if kind == "pi":
        return "π" if uni else "pi"
    if kind == "var":
        return node[1]
    if kind == "sqrt":
        inner = _plain(node[1], style)
        if uni:
            return f"√{inner}" if node[1][0] == "num" else f"√({inner})"
        return f"sqrt({inner})"
    if kind in ("frac", "div"):
        return f"{_pwrap(node[1], style)}/{_pwrap(node[2], style)}"
    if kind == "mixed":
        return _plain(("frac", ("num", str(int(node[1][1]) * int(node[2][2][1]) + int(node[2][1][1]))), node[2][2]),
                      style)
    if kind == "mul":
        factors = node[1]
        fracs = [n for n in factors[:-1] if n[0] == "frac"]
        if fracs:  # (8/√3)π is ambiguous written flat; models move the factor: 8π/√3
            frac = fracs[0]
            rest = [n for n in factors if n is not frac]
            numerator = ("mul", [frac[1], *rest]) if frac[1] != ("num", "1") else (
                rest[0] if len(rest) == 1 else ("mul", rest))
            return _plain(("frac", numerator, frac[2]), style)
        glue = {"text": "*", "text_space": " ", "unicode": ""}[style]
        out = _plain(factors[0], style)
        for prev, n in zip(factors, factors[1:]):
            part = _plain(n, style)
            sep = glue if not (uni and prev[0] == "num" and part[0].isdigit()) else "·"
            out += sep + part
        return out
    if kind == "add":
        out = ""
        for i, (sign, n) in enumerate(node[1]):
            text = _plain(n, style)
            out += (f"-{text}" if sign == "-" else text) if i == 0 else f" {sign} {text}"
        return out
    if kind == "pow":
        exp = _plain(node[2], style)
        if uni and exp in ("2", "3"):
            return _pwrap(node[1], style) + {"2": "²", "3": "³"}[exp]
        return f"{_pwrap(node[1], style)}^{exp}"
    raise ValueError(kind)


def _pwrap(node, style: str) -> str:
    text = _plain(node, style)
    return text if _simple(node) else f"({text})"


def _spell(sides, render: Callable[[Any], str], sep: str = ":") -> str:
    return sep.join(render(s) for s in sides)


# ----------------------------------------------------------------------------- the table

_ANGLE = re.compile(r"\\angle|\\widehat|\bangle\b|\bdegree|\barc\b|measure of", re.IGNORECASE)
_UNITS = ("inches", "feet", "meters", "cm", "ft", "miles", "units")
_AREA = re.compile(r"\barea\b", re.IGNORECASE)


def _context(problems: list[str]) -> tuple[bool, list[str], bool]:
    """(an angle is asked, units named in the problems, an area is asked) over the problems with this answer."""
    text = " ".join(problems)
    units = [u for u in _UNITS if re.search(rf"\b{u}\b", text)]
    return bool(_ANGLE.search(text)), units, bool(_AREA.search(text))


def _decimal(value: sympy.Expr, places: int) -> str:
    exact = Decimal(str(sympy.N(value, 40)))
    return str(exact.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP))


def _terminates(value: sympy.Expr) -> bool:
    """A rational whose decimal expansion ends (denominator 2^a 5^b): its decimal is exact, not a rounding."""
    if not value.is_Rational:
        return False
    q = int(value.q)
    for p in (2, 5):
        while q % p == 0:
            q //= p
    return q == 1


def _with_thousands(num: str) -> str | None:
    whole, _, frac = num.partition(".")
    if len(whole.lstrip("-")) < 4:
        return None
    return f"{int(whole):,}" + (f".{frac}" if frac else "")


def _right(gold: str, sides, problems: list[str]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = [("as-is", gold)]
    if sides is None:  # outside the grammar: text answers
        compact = re.sub(r"\s+", " ", gold)
        out += [("compact", re.sub(r"\s*(\\[A-Za-z]+)\s*", r"\1 ", compact).strip()),
                ("capitalised", gold[:1].upper() + gold[1:]), ("full stop", gold + ".")]
        uni = gold.replace("\\angle ", "∠").replace("\\cong", "≅")
        if uni != gold:
            out.append(("unicode", uni))
        return out
    angle, units, area = _context(problems)
    latex = _spell(sides, _latex)
    forms = [("latex", latex), ("latex $", f"${latex}$"), ("latex spaced", _spell(sides, lambda s: _latex(s, True))),
             ("latex no braces", _spell(sides, lambda s: _latex(s, False, False))),
             ("latex dfrac", latex.replace("\\frac", "\\dfrac")),
             ("text", _spell(sides, lambda s: _plain(s, "text"))),
             ("text spaced", _spell(sides, lambda s: _plain(s, "text_space"))),
             ("unicode", _spell(sides, lambda s: _plain(s, "unicode"))),
             ("unicode spaced ratio", _spell(sides, lambda s: _plain(s, "unicode"), " : "))]
    if len(sides) == 1:
        forms = [f for f in forms if f[0] != "unicode spaced ratio"]
    seen = {gold}
    for kind, text in forms:
        if text not in seen:
            seen.add(text)
            out.append((kind, text))
    values = _values(sides)
    single = len(sides) == 1 and not values[0].free_symbols
    if single and not _terminates(values[0]):
        for places in (2, 3):
            out.append((f"decimal {places}", _decimal(values[0], places)))
    if len(sides) == 1 and sides[0][0] == "num":
        sep = _with_thousands(sides[0][1])
        if sep:
            out.append(("thousands", sep))
        if "." not in sides[0][1]:
            out.append(("trailing .0", sides[0][1] + ".0"))
    if single:
        base_latex, base_uni = latex, _plain(sides[0], "unicode")
        if angle and sides[0][0] in ("num", "frac", "mixed"):
            out += [("degree sign", f"{base_uni}°"), ("degree latex", f"{base_latex}^\\circ"),
                    ("degree latex braces", f"{base_latex}^{{\\circ}}"), ("degree word", f"{base_uni} degrees")]
        for unit in units:
            out.append((f"unit {unit}", f"{base_uni} {unit}"))
            if area:
                out.append(("unit squared", f"{base_uni} square {unit}"))
                if unit not in ("units",):
                    out.append(("unit ^2", f"{base_latex} \\text{{{unit}}}^2"))
    return out


def _perturbed(sides) -> list:
    """Parses with one change each (a number moved, a radicand changed, sqrt/pi dropped or swapped)."""
    found: list = []

    def walk(node, rebuild):
        kind = node[0]
        if kind == "num":
            text = node[1]
            value = Decimal(text)
            step = Decimal(1).scaleb(Decimal(text).as_tuple().exponent) if "." in text else Decimal(1)
            for new in (value + step, value - step, value * 10, value + 10):
                if new >= 0:
                    found.append(rebuild(("num", str(new))))
        elif kind == "pi":
            found.append(rebuild(("num", "1")))
            found.append(rebuild(("sqrt", ("num", "3"))))
        elif kind == "var":
            found.append(rebuild(("var", "z" if node[1] != "z" else "w")))
        elif kind == "sqrt":
            found.append(rebuild(node[1]))
            found.append(rebuild(("pi",)))
            walk(node[1], lambda n: rebuild(("sqrt", n)))
        elif kind in ("frac", "div"):
            walk(node[1], lambda n: rebuild((kind, n, node[2])))
            walk(node[2], lambda n: rebuild((kind, node[1], n)))
            found.append(rebuild((kind, node[2], node[1])))
        elif kind == "mul":
            for i, n in enumerate(node[1]):
                walk(n, lambda m, i=i: rebuild(("mul", [*node[1][:i], m, *node[1][i + 1:]])))
        elif kind == "add":
            for i, (s, n) in enumerate(node[1]):
                walk(n, lambda m, i=i, s=s: rebuild(("add", [*node[1][:i], (s, m), *node[1][i + 1:]])))
            found.append(rebuild(("add", [("-" if s == "+" else "+", n) for s, n in node[1]])))
        elif kind == "pow":
            walk(node[1], lambda n: rebuild(("pow", n, node[2])))
            walk(node[2], lambda n: rebuild(("pow", node[1], n)))
        elif kind == "mixed":
            walk(node[1], lambda n: rebuild(("mixed", n, node[2])))
            walk(node[2], lambda n: rebuild(("mixed", node[1], n)))

    for i, side in enumerate(sides):
        walk(side, lambda n, i=i: [*sides[:i], n, *sides[i + 1:]])
    if len(sides) == 1 and sides[0][0] in ("num", "mul", "sqrt", "frac", "pi"):
        found.append([("add", [("-", sides[0])])])  # negated
    return found


def _wrong(gold: str, sides, others: list[tuple[str, Any]], rng: random.Random) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    gold_values = _values(sides) if sides is not None else None

    def differs(candidate) -> bool:
        try:
            values = _values(candidate)
        except (ValueError, ZeroDivisionError, TypeError):
            return False
        if gold_values is None or len(values) != len(gold_values):
            return True
        if any(v.has(sympy.zoo, sympy.nan, sympy.oo) for v in values):
            return False
        return not all(_same(a, b) for a, b in zip(values, gold_values))

    def spell_all(kind: str, candidate) -> None:
        for style, render in (("latex", _latex), ("text", lambda s: _plain(s, "text")),
                              ("unicode", lambda s: _plain(s, "unicode"))):
            out.append((f"{kind} ({style})", _spell(candidate, render)))

    if sides is not None:
        for candidate in _perturbed(sides):
            if differs(candidate):
                spell_all("perturbed", candidate)
        if len(sides) == 1 and not gold_values[0].free_symbols and not _terminates(gold_values[0]):
            near = Decimal(_decimal(gold_values[0], 2))
            for delta in ("0.01", "-0.01", "0.1"):
                out.append(("decimal off", str(near + Decimal(delta))))
    else:  # text: change a digit or a letter
        changed = re.sub(r"\d", lambda m: str((int(m.group()) + 1) % 10), gold, count=1)
        if changed == gold:
            changed = re.sub(r"\b[A-Z]\b", lambda m: "Q" if m.group() != "Q" else "R", gold, count=1)
        if changed != gold:
            out.append(("perturbed text", changed))
    picked = 0
    for other, other_sides in rng.sample(others, len(others)):
        if picked == 3:
            break
        if other == gold or (other_sides is not None and sides is not None and not differs(other_sides)):
            continue
        if sides is None and other_sides is None and other.lower() == gold.lower():
            continue
        picked += 1
        if other_sides is None:
            out.append(("other answer", other))
        else:
            spell_all("other answer", other_sides)
    return out


def build_table(realdata: Path = DEFAULT_REALDATA, seed: int = 0) -> list[Notation]:
    """Labelled notations of every distinct real Geometry3K answer (module doc); deterministic for a seed."""
    answers = real_answers(realdata)
    parsed = {gold: parse_answer(gold) for gold in answers}
    others = sorted(parsed.items())
    rng = random.Random(seed)
    table: list[Notation] = []
    for gold in sorted(answers):
        sides = parsed[gold]
        right = _right(gold, sides, answers[gold])
        right_texts = {text for _, text in right}
        unique = {text: kind for kind, text in reversed(right)}
        table += [Notation(gold, text, True, kind) for text, kind in reversed(unique.items())]
        seen: set[str] = set()
        for kind, text in _wrong(gold, sides, others, rng):
            if text not in right_texts and text not in seen:
                seen.add(text)
                table.append(Notation(gold, text, False, kind))
    return table


# ----------------------------------------------------------------------------- measuring

def release_normalize(text: str) -> str:
    """The release's answer normalisation before mathruler (reference-release.md)."""
    text = " ".join(unicodedata.normalize("NFKC", text).casefold().split())
    return text.rstrip(".。").strip().replace("π", "\\pi")


def mathruler_grade(prediction: str, gold: str) -> bool:
    """The release's verifier: mathruler's ``grade_answer`` on normalised text, ground truth first (as released)."""
    from mathruler.grader import grade_answer

    try:
        return bool(grade_answer(release_normalize(gold), release_normalize(prediction)))
    except Exception:  # noqa: BLE001 - a crash is a rejection, as in the release's try/except
        return False


def pepo_grade(prediction: str, gold: str) -> bool:
    """pepo's verifier, in-process (no time guard: the table is trusted text)."""
    from pepo.rewards.math_accuracy import grade_math

    return grade_math(prediction, gold)


def measure(table: list[Notation], grade: Callable[[str, str], bool]) -> dict[str, Any]:
    """Right notations judged right (%), wrong values judged right (%), and the misjudged rows."""
    right = [n for n in table if n.right]
    wrong = [n for n in table if not n.right]
    missed = [n for n in right if not grade(n.text, n.gold)]
    accepted = [n for n in wrong if grade(n.text, n.gold)]
    return {"right": len(right), "wrong": len(wrong),
            "right_accepted_pct": 100.0 * (len(right) - len(missed)) / len(right),
            "wrong_accepted_pct": 100.0 * len(accepted) / len(wrong), "missed": missed, "accepted": accepted}


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    parts = []
    for name in ("math-verify", "latex2sympy2_extended", "sympy", "mathruler", "pylatexenc"):
        try:
            parts.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            parts.append(f"{name} (not installed)")
    return ", ".join(parts)


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--realdata", type=Path, default=DEFAULT_REALDATA)
    parser.add_argument("--show", type=int, default=10, help="misjudged rows to list per verifier")
    parser.add_argument("--only", choices=("pepo", "mathruler"), help="measure one verifier")
    args = parser.parse_args(argv)
    if not (args.realdata / "geometry3k" / "pepo_jsonl").is_dir():
        print(f"no Geometry3K release files under {args.realdata}/geometry3k/pepo_jsonl", file=sys.stderr)
        raise SystemExit(2)
    table = build_table(args.realdata)
    n_gold = len({n.gold for n in table})
    print(f"table: {n_gold} distinct real Geometry3K answers, {sum(n.right for n in table)} right notations, "
          f"{sum(not n.right for n in table)} wrong values")
    print(f"python {platform.python_version()}, {_versions()}")
    graders = {"pepo": pepo_grade, "mathruler": mathruler_grade}
    results = {}
    for name, grade in graders.items():
        if args.only and name != args.only:
            continue
        if name == "mathruler":
            try:
                import mathruler.grader  # noqa: F401
            except ImportError:
                print("mathruler: not installed (pip install -e '.[dev]')")
                continue
        start = time.perf_counter()
        results[name] = measure(table, grade)
        results[name]["seconds"] = time.perf_counter() - start
    print("\n| verifier | right notations judged right | wrong values judged right | seconds |\n|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['right_accepted_pct']:.2f}% ({r['right'] - len(r['missed'])}/{r['right']}) | "
              f"{r['wrong_accepted_pct']:.2f}% ({len(r['accepted'])}/{r['wrong']}) | {r['seconds']:.0f} |")
    for name, r in results.items():
        for label, rows in (("right judged wrong", r["missed"]), ("wrong judged right", r["accepted"])):
            if rows and args.show:
                print(f"\n{name}: {label} (first {min(args.show, len(rows))} of {len(rows)}):")
                for n in rows[: args.show]:
                    print(f"  gold {n.gold!r:40} {n.kind:24} {n.text!r}")
    return results


if __name__ == "__main__":
    main()
