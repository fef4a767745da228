"""Adversarial responses on every real item of Geometry3K (test), LogicVista, MathVista (testmini) and MathVerse
(testmini, multiple choice), scored by both protocols of ``pepo eval`` (``pepo`` and ``release``).

Each item gets a few dozen responses of named *kinds*, written the ways RL-trained VLMs answer the paper's prompt
(right and wrong answers in many notations, cut-off responses, several answers, letters in every case, option
texts), each **labelled by construction** (is it a right answer under the answer contract?). Two verdicts are
checked per response: pepo's must equal the label, and the release's must equal what the release's rules give
for that kind (``expect_release``; None where it depends on mathruler's grader item by item).

Gold and wrong answers come from the published files, parsed here with plain ``json`` (MathVerse's options
from its question text with :func:`tests.realdata.raw_mathverse_options`), not with pepo's readers; the rows the
scorers take are pepo's own task rows (so the reader's ``choices`` column is exercised too).

``python -m tests.adversarial`` scores every item and prints the per-benchmark table (how many responses each
protocol scores right, and how often they agree); ``tests/test_adversarial_suite.py`` asserts the verdicts on a
sample (and on every item with ``-m slow``).
"""

from __future__ import annotations

import json
import random
import re
import sys
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Callable, Iterator

from tests.realdata import REALDATA, patient_verifier, raw_mathverse_options

BENCHMARKS = ("geometry3k", "logicvista", "mathvista", "mathverse")
THINK = "<think>Let me look at the figure and work it out step by step.</think>"


@dataclass
class Spec:
    """What a response needs about one item: the gold and a wrong answer as written, and for option items the
    letters and option texts."""

    id: str
    gold: str
    wrong: str
    gold_letter: str | None = None
    wrong_letter: str | None = None
    gold_text: str | None = None
    wrong_text: str | None = None
    numeric: bool = False
    integer: bool = False
    options: list[str] = field(default_factory=list)
    gold_is_letter: bool = True  # MathVerse: the published answer is a letter (else the option's text)


@dataclass
class Kind:
    """A response kind: ``write(spec) -> text or None`` (None: not applicable to this item), its label, and the
    release's verdict by its rules (a number, a function of the spec, or None: item by item)."""

    name: str
    write: Callable[[Spec], str | None]
    label: float
    release: dict[str, object] = field(default_factory=dict)  # benchmark -> 0/1, callable(spec), or None


def _moved(number: str) -> str:
    value = Decimal(number)
    return str(value + (Decimal(1).scaleb(value.as_tuple().exponent) if "." in number else 1))


def _first_number_moved(text: str) -> str:
    match = re.search(r"\d+(?:\.\d+)?", text)
    return text[: match.start()] + _moved(match.group()) + text[match.end():] if match else text + " + 1"


# ----------------------------------------------------------------------------------------------- specs per item


def geometry3k_specs() -> Iterator[Spec]:
    path = REALDATA / "geometry3k" / "pepo_jsonl" / "test.jsonl"
    for line in path.read_text().splitlines():
        record = json.loads(line)
        pid = re.search(r"/test/(\d+)/", record["images"][0]).group(1)
        gold = record["solution"]
        numeric = bool(re.fullmatch(r"-?\d+(?:\.\d+)?", gold))
        yield Spec(pid, gold, _first_number_moved(gold), numeric=numeric, integer=numeric and "." not in gold)


def logicvista_specs() -> Iterator[Spec]:
    data = json.loads((REALDATA / "logicvista" / "dataset.json").read_text())
    for key, record in data.items():
        gold = record["answer"].strip()
        if not re.fullmatch(r"[A-Z]", gold):
            continue  # the release and pepo both keep single-letter items by default
        wrong = "B" if gold == "A" else "A"
        yield Spec(key, gold, wrong, gold_letter=gold, wrong_letter=wrong)


def mathvista_specs() -> Iterator[Spec]:
    data = json.loads((REALDATA / "mathvista" / "testmini.json").read_text())
    for pid, record in data.items():
        answer = record["answer"]
        if record["question_type"] == "multi_choice":
            choices = record["choices"]
            g = choices.index(answer)
            w = next(i for i, c in enumerate(choices) if c.strip() != answer.strip())
            yield Spec(pid, chr(65 + g), chr(65 + w), chr(65 + g), chr(65 + w), choices[g], choices[w], options=choices)
        elif record["answer_type"] in ("integer", "float"):
            yield Spec(pid, answer, _moved(answer), numeric=True, integer=record["answer_type"] == "integer")
        else:  # list
            values = json.loads(answer)
            yield Spec(pid, answer, json.dumps(list(reversed(values))))


def mathverse_specs() -> Iterator[Spec]:
    for record in json.loads((REALDATA / "mathverse" / "testmini_text_only.json").read_text()):
        if record["question_type"] != "multi-choice":
            continue
        options = raw_mathverse_options(record["question"])
        answer = record["answer"].strip()
        letters = re.fullmatch(r"\(?([A-F])\)?", answer)
        if letters:
            g = ord(letters.group(1)) - 65
        elif answer in [o.strip() for o in options]:
            g = [o.strip() for o in options].index(answer)
        else:  # several letters ("A\nC"): a set
            truth = re.findall(r"[A-F]", answer)
            other = next(chr(65 + i) for i in range(len(options)) if chr(65 + i) not in truth)
            yield Spec(record["sample_index"], ", ".join(truth), ", ".join(truth[:1] + [other]), gold_is_letter=False)
            continue
        w = next(i for i, o in enumerate(options) if i != g and o.strip() != options[g].strip())
        yield Spec(record["sample_index"], chr(65 + g), chr(65 + w), chr(65 + g), chr(65 + w), options[g], options[w],
                   options=options, gold_is_letter=bool(letters))


SPECS = {"geometry3k": geometry3k_specs, "logicvista": logicvista_specs, "mathvista": mathvista_specs,
         "mathverse": mathverse_specs}


# ----------------------------------------------------------------------------------------------- response kinds


def _span(text: str) -> str:
    return f"{THINK}\n<answer>{text}</answer>"


def _form(s: Spec, text: str | None) -> str | None:
    """A letter form as a response, unless it is some option's own text (MathVista has options ``(a)``..``(e)``)."""
    if not text or any(text.strip() == o.strip() for o in s.options):
        return None
    return _span(text)


def _is_letter_a(s: Spec) -> float:
    return float(s.gold_letter == "A")


def _letter_gold(s: Spec) -> float:
    """MathVerse under the release: a letter is right only where the published answer is that letter."""
    return float(s.gold_is_letter)


KINDS: list[Kind] = [
    # right answers
    Kind("gold", lambda s: _span(s.gold), 1,
         {"geometry3k": 1, "logicvista": 1, "mathverse": _letter_gold, "mathvista": 1}),
    Kind("gold boxed", lambda s: _span(f"\\boxed{{{s.gold}}}"), 1,
         {"geometry3k": 1, "logicvista": 1, "mathverse": _letter_gold}),
    Kind("gold with answer phrase", lambda s: _span(f"The answer is {s.gold}."), 1,
         {"geometry3k": 0, "logicvista": 1, "mathverse": 0}),
    Kind("gold, text after the span", lambda s: _span(s.gold) + " I am confident.", 1,
         {"geometry3k": 1, "logicvista": 1, "mathverse": _letter_gold, "mathvista": 1}),
    Kind("gold in $..$", lambda s: None if s.gold_letter else _span(f"${s.gold}$"), 1, {"mathvista": 1}),
    Kind("gold, a wrong draft span inside the thinking",
         lambda s: f"<think>Draft: <answer>{s.wrong}</answer> no, that is wrong.</think>\n<answer>{s.gold}</answer>",
         1, {"geometry3k": 0, "logicvista": 0, "mathverse": 0, "mathvista": None}),
    Kind("gold first of two spans", lambda s: _span(s.gold) + f"<answer>{s.wrong}</answer>", 1,
         {"geometry3k": 1, "logicvista": 1, "mathverse": _letter_gold, "mathvista": 1}),
    Kind("lowercase letter", lambda s: s.gold_letter and _form(s, s.gold_letter.lower()), 1,
         {"logicvista": 1, "mathverse": _letter_gold, "mathvista": None}),
    Kind("(letter)", lambda s: s.gold_letter and _form(s, f"({s.gold_letter})"), 1,
         {"logicvista": 1, "mathverse": _letter_gold, "mathvista": 1}),
    Kind("(lowercase letter)", lambda s: s.gold_letter and _form(s, f"({s.gold_letter.lower()})"), 1,
         {"logicvista": 1, "mathverse": _letter_gold, "mathvista": 1}),
    Kind("letter.", lambda s: s.gold_letter and _form(s, f"{s.gold_letter}."), 1,
         {"logicvista": 1, "mathverse": _letter_gold, "mathvista": None}),
    Kind("**letter**", lambda s: s.gold_letter and _form(s, f"**{s.gold_letter}**"), 1,
         {"logicvista": 1, "mathvista": None, "mathverse": None}),
    Kind("Option letter", lambda s: s.gold_letter and _form(s, f"Option {s.gold_letter}"), 1,
         {"logicvista": 1, "mathverse": 0, "mathvista": None}),
    Kind("option text", lambda s: s.gold_text and _span(s.gold_text), 1, {"mathvista": None, "mathverse": None}),
    Kind("(letter) option text", lambda s: s.gold_text and _span(f"({s.gold_letter}) {s.gold_text}"), 1,
         {"mathvista": 1, "mathverse": None}),
    Kind("thousands separator", lambda s: s.integer and abs(int(s.gold)) >= 1000 and _span(f"{int(s.gold):,}"), 1,
         {"mathvista": 0}),
    Kind("one more decimal place", lambda s: s.numeric and not s.integer and "." in s.gold and
         _span(s.gold + "0"), 1, {"mathvista": 1}),
    # wrong answers and answers that are no answer
    Kind("wrong", lambda s: _span(s.wrong), 0, {"geometry3k": 0, "logicvista": 0, "mathvista": None, "mathverse": None}),
    Kind("wrong letter, lowercase", lambda s: s.wrong_letter and _form(s, s.wrong_letter.lower()), 0,
         {"logicvista": 0, "mathverse": 0, "mathvista": None}),
    Kind("wrong option text", lambda s: s.wrong_text and _span(s.wrong_text), 0, {"mathvista": None, "mathverse": None}),
    Kind("gold letter with a wrong option's text", lambda s: s.gold_text and _span(f"({s.gold_letter}) {s.wrong_text}"),
         0, {"mathvista": 1, "mathverse": None}),
    Kind("wrong first of two spans", lambda s: _span(s.wrong) + f"<answer>{s.gold}</answer>", 0,
         {"geometry3k": 0, "logicvista": 0, "mathverse": None, "mathvista": None}),
    Kind("gold in the thinking, wrong in the span",
         lambda s: f"<think>Maybe it is {s.gold}? No.</think>\n<answer>{s.wrong}</answer>", 0,
         {"geometry3k": 0, "logicvista": 0, "mathvista": None, "mathverse": None}),
    Kind("gold or wrong", lambda s: _span(f"{s.gold} or {s.wrong}"), 0,
         {"geometry3k": None, "logicvista": 0, "mathverse": 0, "mathvista": None}),
    Kind("wrong or gold", lambda s: _span(f"{s.wrong} or {s.gold}"), 0,
         {"geometry3k": None, "logicvista": 1, "mathverse": 0, "mathvista": None}),
    Kind("digits apart (1 2)", lambda s: s.integer and len(s.gold.lstrip("-")) >= 2 and
         _span(f"{s.gold[:-1]} {s.gold[-1]}"), 0, {"geometry3k": None, "mathvista": 0}),
    Kind("integer + .5", lambda s: s.integer and _span(f"{s.gold}.5"), 0, {"geometry3k": 0, "mathvista": 1}),
    Kind("empty span", lambda s: _span(""), 0,
         {"geometry3k": 0, "logicvista": _is_letter_a, "mathverse": 0, "mathvista": None}),
    Kind("cut off in the thinking, gold mentioned",
         lambda s: f"<think>If it were {s.wrong} the check would fail; it looks like {s.gold}, but I still need to "
                   "check the other", 0, {"geometry3k": 0, "mathverse": 0, "mathvista": None,
                                          "logicvista": None}),
    Kind("cut off in the thinking, ends with the gold",
         lambda s: f"<think>The other one fails, so the candidate is {s.gold}", 0,
         {"geometry3k": None, "logicvista": 1, "mathverse": None, "mathvista": None}),
    Kind("cut off after <answer>", lambda s: f"<think>It is {s.gold}.</think>\n<answer>The answer is", 0,
         {"geometry3k": 0, "mathverse": 0, "mathvista": None, "logicvista": lambda s: float(s.gold_letter == "T")}),
    Kind("cut off inside the span", lambda s: f"{THINK}\n<answer>{s.gold}", 0,
         {"geometry3k": 1, "logicvista": 1, "mathverse": _letter_gold, "mathvista": None}),
    Kind("closed thinking only, gold in it", lambda s: f"<think>The answer is {s.gold}.</think>", 0,
         {"geometry3k": 0, "logicvista": 1, "mathverse": 0, "mathvista": None}),
    Kind("bare gold after </think>", lambda s: f"{THINK}\n{s.gold}", 0,
         {"geometry3k": 0, "logicvista": 1, "mathverse": 0, "mathvista": None}),
    Kind("untagged sentence", lambda s: f"The answer is {s.gold}.", 0,
         {"geometry3k": 0, "logicvista": 1, "mathverse": 0, "mathvista": None}),
]


def responses(spec: Spec) -> list[tuple[Kind, str]]:
    out = []
    for kind in KINDS:
        text = kind.write(spec)
        if text:
            out.append((kind, text))
    return out


def expected_release(kind: Kind, benchmark: str, spec: Spec) -> float | None:
    rule = kind.release.get(benchmark)
    if rule is None:
        return None
    return float(rule(spec)) if callable(rule) else float(rule)


# ----------------------------------------------------------------------------------------------- scoring


@dataclass
class Verdicts:
    """Per benchmark: per kind (responses, pepo right, release right, agree) and the mismatches found."""

    benchmark: str
    items: int = 0
    per_kind: dict[str, list[int]] = field(default_factory=dict)
    pepo_wrong: list[tuple[str, str, str, float]] = field(default_factory=list)  # (id, kind, text, score)
    release_unexpected: list[tuple[str, str, str, float, float]] = field(default_factory=list)
    seconds: float = 0.0

    def totals(self) -> tuple[int, int, int, int]:
        n = sum(v[0] for v in self.per_kind.values())
        return n, sum(v[1] for v in self.per_kind.values()), sum(v[2] for v in self.per_kind.values()), \
            sum(v[3] for v in self.per_kind.values())


def task_rows(benchmark: str) -> dict[str, dict]:
    """pepo's own rows of the benchmark's default subset, by id (no images)."""
    from pepo.eval.tasks import TASKS, load_task_rows

    paths = {"geometry3k": ("geometry3k/pepo_jsonl/test.jsonl", "test"),
             "logicvista": ("logicvista/dataset.json", "test"), "mathvista": ("mathvista/testmini.json", "testmini"),
             "mathverse": ("mathverse/testmini_text_only.json", "testmini")}
    path, split = paths[benchmark]
    rows = load_task_rows(TASKS[benchmark], str(REALDATA / path), split, with_images=False, log=None)
    return {str(r["id"]): dict(r) for r in rows}


def score_benchmark(benchmark: str, sample: int | None = None, seed: int = 0) -> Verdicts:
    """Score ``sample`` items (all when None) of ``benchmark`` with both protocols."""
    from pepo.eval.protocols import release_scorer
    from pepo.eval.tasks import TASKS, make_scorer

    started = time.monotonic()
    specs = list(SPECS[benchmark]())
    if sample is not None and sample < len(specs):
        specs = random.Random(seed).sample(specs, sample)
    rows = task_rows(benchmark)
    result = Verdicts(benchmark)
    with patient_verifier():  # before make_scorer, which looks the reward up
        ours, theirs = make_scorer(TASKS[benchmark]), release_scorer(benchmark)
        for spec in specs:
            row = rows[spec.id]
            pairs = responses(spec)
            texts = [t for _, t in pairs]
            pepo_scores, release_scores = ours(texts, row)[0], theirs(texts, row)[0]
            result.items += 1
            for (kind, text), p, r in zip(pairs, pepo_scores, release_scores):
                counts = result.per_kind.setdefault(kind.name, [0, 0, 0, 0])
                counts[0] += 1
                counts[1] += p == kind.label
                counts[2] += r == kind.label
                counts[3] += p == r
                if p != kind.label:
                    result.pepo_wrong.append((spec.id, kind.name, text, p))
                want = expected_release(kind, benchmark, spec)
                if want is not None and r != want:
                    result.release_unexpected.append((spec.id, kind.name, text, r, want))
    result.seconds = time.monotonic() - started
    return result


def table(results: list[Verdicts]) -> str:
    lines = ["| benchmark | items | responses | pepo right | release right | protocols agree |", "|---|---|---|---|---|---|"]
    for r in results:
        n, p, rel, agree = r.totals()
        lines.append(f"| {r.benchmark} | {r.items} | {n} | {p} ({100 * p / n:.1f}%) | {rel} ({100 * rel / n:.1f}%) | "
                     f"{agree} ({100 * agree / n:.1f}%) |")
    return "\n".join(lines)


def kind_table(result: Verdicts) -> str:
    lines = [f"{result.benchmark}: | kind | responses | pepo right | release right |", "|---|---|---|---|"]
    for name, (n, p, r, _) in result.per_kind.items():
        lines.append(f"| {name} | {n} | {p} | {r} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[Verdicts]:
    args = argv if argv is not None else sys.argv[1:]
    per_kind = "--kinds" in args
    names = [a for a in args if a != "--kinds"] or list(BENCHMARKS)
    results = []
    for name in names:
        if not REALDATA.is_dir():
            print(f"skipped: {REALDATA} is absent")
            break
        results.append(score_benchmark(name))
        r = results[-1]
        print(f"{name}: {r.items} items in {r.seconds:.0f} s; pepo off its label on {len(r.pepo_wrong)}, the release "
              f"off its rule on {len(r.release_unexpected)}", flush=True)
        for failure in (r.pepo_wrong + r.release_unexpected)[:10]:
            print("  ", failure)
        if per_kind:
            print(kind_table(r))
    print(table(results))
    return results


if __name__ == "__main__":
    main()
