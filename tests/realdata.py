"""Every eval scorer on every real item of ``../shared/realdata/``: gold answers written as models write them
score 1, every other option or a wrong value scores 0.

The published files are read here with plain ``json`` and turned into the rows the eval scorers take
(``pepo.eval.tasks.make_scorer``); the format readers of the data layer are tested elsewhere. Each item gets

* **gold** responses: the letter, ``(B)``, ``B.``, ``The answer is (B)``, the option text, ``(B) text``, the
  answer in ``\\boxed{}`` (letter and text) for choice tasks; LaTeX, plain text, Unicode and ``\\boxed{}``
  for math (Geometry3K via the notation writer of :mod:`benchmarks.verifier_notations`); several spellings
  of a class name; the box in several spellings for RefCOCO;
* **wrong** responses: every other option (letter and text), other letters in the item's range, or a wrong
  value (a number moved, another answer of the dataset, a box that misses).

An item passes *gold* when all its gold responses score 1 and is *accepted wrong* when any wrong response
scores 1. ``python -m tests.realdata`` prints the per-task table; ``tests/test_real_item_scorers.py`` asserts it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import re
import sys
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterator

# ../shared/realdata beside the checkout (development machines, CI); PEPO_REALDATA points elsewhere (a worktree).
REALDATA = Path(os.environ.get("PEPO_REALDATA") or Path(__file__).resolve().parents[1].parent / "shared" / "realdata")


@dataclass
class Item:
    """One real item: the row the scorer reads, the gold and wrong responses (answer-span texts)."""

    id: str
    row: dict
    gold: list[str]
    wrong: list[str]


@dataclass
class TaskResult:
    task: str
    items: int = 0
    skipped: list[str] = field(default_factory=list)  # items with no gold answer (named)
    gold_ok: int = 0
    wrong_accepted: int = 0
    gold_responses: int = 0
    wrong_responses: int = 0
    failures: list[tuple[str, str, str, float]] = field(default_factory=list)  # (id, kind, response, score)


def wrap(answer: str) -> str:
    return f"<think>reasoning</think> <answer>{answer}</answer>"


def _letter(i: int) -> str:
    return chr(ord("A") + i)


def choice_forms(letter: str, text: str | None) -> list[str]:
    forms = [letter, f"({letter})", f"{letter}.", f"The answer is ({letter})", f"\\boxed{{{letter}}}"]
    if text is not None:
        forms += [text, f"({letter}) {text}", f"\\boxed{{{text}}}"]
    return forms


def options_items(options: list[str], gold_index: int) -> tuple[list[str], list[str]]:
    """Gold and wrong responses of a multiple-choice item whose options are texts (A first)."""
    gold = choice_forms(_letter(gold_index), options[gold_index])
    wrong = []
    for i, option in enumerate(options):
        if i != gold_index and str(option).strip() != str(options[gold_index]).strip():  # a repeated option is right
            wrong += [_letter(i), f"({_letter(i)})", str(option)]
    return gold, wrong


# ----------------------------------------------------------------------------- per task

def puzzle_items(folder: str) -> Iterator[Item]:
    """PuzzleVQA / AlgoPuzzleVQA: per-category JSON Lines named .json; answer = option text (types mixed)."""
    index = 0
    for path in sorted((REALDATA / folder / "data").glob("*.json")):
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            record = json.loads(line)
            options = [str(o) for o in record["options"]]
            gold_index = options.index(str(record["answer"]))  # types differ: compared as text
            gold, wrong = options_items(options, gold_index)
            # the rows the multiple_choice adapter builds: answer = letter, choices = option texts
            yield Item(str(index), {"answer": _letter(gold_index), "choices": options}, gold, wrong)
            index += 1


_RANGE = re.compile(r"\b([A-I])\s*(?:-|–|to)\s*([A-I])\b")
_DIGIT_RANGE = re.compile(r"\b([1-9])\s*(?:-|–|to)\s*([1-9])\b")
_LISTED = re.compile(r"\(([A-I](?:,\s*[A-I])*,?\s*(?:or|and)\s*[A-I])\)")


def logicvista_labels(question: str, answer: str) -> list[str]:
    """The option labels an item offers: from its question ("A-E", "(A, B, C, or D)", "1-5"), else A-D."""
    if answer.isdigit():
        match = _DIGIT_RANGE.search(question)
        return [str(d) for d in range(int(match.group(1)), int(match.group(2)) + 1)] if match else list("12345")
    match = _RANGE.search(question)
    if match:
        return [chr(c) for c in range(ord(match.group(1)), ord(match.group(2)) + 1)]
    match = _LISTED.search(question)
    if match:
        return re.findall(r"[A-I]", match.group(1))
    return sorted(set("ABCD") | set(re.findall(r"[A-I]", answer)))


def logicvista_items() -> Iterator[Item]:
    data = json.loads((REALDATA / "logicvista" / "dataset.json").read_text())
    for key, record in data.items():
        answer = record["answer"].strip()
        if not answer:
            continue  # v1_382: no question, no answer (reported as skipped)
        labels = logicvista_labels(record["question"], answer)
        truth = [a.strip() for a in answer.split(",")]
        if len(truth) == 1:
            x = truth[0]
            gold = [x, f"({x})", f"{x}.", f"The answer is {x}", f"\\boxed{{{x}}}"]
            wrong = [w for label in labels if label != x for w in (label, f"({label})")]
        else:
            gold = [", ".join(truth), " and ".join(truth), ", ".join(reversed(truth)),
                    ", ".join(f"({x})" for x in truth), f"\\boxed{{{', '.join(truth)}}}"]
            extra = next(label for label in labels if label not in truth)
            wrong = truth + [", ".join(truth + [extra])]
        yield Item(key, {"answer": record["answer"]}, gold, wrong)


def _number_forms(answer: str) -> list[str]:
    forms = [answer, f"\\boxed{{{answer}}}", f"The answer is {answer}."]
    if re.fullmatch(r"-?\d+", answer) and abs(int(answer)) >= 1000:
        forms.append(f"{int(answer):,}")
    return forms


def _moved(answer: str) -> list[str]:
    """Wrong values: the last digit moved up and down by one unit, and the value times ten."""
    value = Decimal(answer)
    step = Decimal(1).scaleb(value.as_tuple().exponent)
    return [str(v) for v in (value + step, value - step, value * 10) if v != value]


def mathvista_items() -> Iterator[Item]:
    data = json.loads((REALDATA / "mathvista" / "testmini.json").read_text())
    for pid, record in data.items():
        row = {k: record[k] for k in ("answer", "question_type", "choices", "answer_type", "precision")}
        answer = record["answer"]
        if record["question_type"] == "multi_choice":
            gold, wrong = options_items([str(c) for c in record["choices"]], record["choices"].index(answer))
        elif record["answer_type"] == "integer":
            gold, wrong = _number_forms(answer), _moved(answer)
        elif record["answer_type"] == "float":
            digits = int(record["precision"])
            gold = _number_forms(answer) + [f"{Decimal(answer):.{digits + 1}f}"]  # one more place, same rounding
            wrong = _moved(f"{Decimal(answer):.{digits}f}")
        else:  # list
            values = json.loads(answer)
            gold = [answer, json.dumps(values, separators=(",", ":"))]
            wrong = [json.dumps(values[:-1] + [values[-1] + 1]), json.dumps(list(reversed(values)))]
        yield Item(pid, row, gold, wrong)


def raw_mathverse_options(question: str) -> list[str]:
    """MathVerse's options read straight from the published question text, independently of pepo's parser: the
    lines ``X:text`` / ``X. text`` after the last ``Choices:`` / ``Choice:`` line (non-option lines ignored)."""
    heads = list(re.finditer(r"^Choices?[ \t]*:[ \t]*$", question, re.M))
    if not heads:
        return []
    return re.findall(r"^[ \t]*[A-H][ \t]*[:.][ \t]*(.*?)[ \t]*$", question[heads[-1].end():], re.M)


def mathverse_items() -> Iterator[Item]:
    data = json.loads((REALDATA / "mathverse" / "testmini_text_only.json").read_text())
    for record in data:
        row = {k: record[k] for k in ("answer", "question_type", "question")}
        answer = record["answer"].strip()
        if record["question_type"] == "multi-choice":
            options = raw_mathverse_options(record["question"])
            letters = re.findall(r"(?<![A-Za-z])([A-H])(?![A-Za-z])", answer) if len(answer) <= 5 else []
            if not letters:  # the option text itself ("False", "090^\circ T")
                letters = [_letter(i) for i, o in enumerate(options) if o.strip() == answer]
            if len(letters) == 1:
                index = ord(letters[0]) - ord("A")
                gold, wrong = options_items(options, index)
            else:  # several letters: a set
                gold = [", ".join(letters), " and ".join(letters), ", ".join(reversed(letters))]
                wrong = letters + [_letter(i) for i in range(len(options)) if _letter(i) not in letters]
        else:
            value = _free_form_value(answer)
            written = answer.replace("掳", "°")  # a model writes the degree sign, not the file's mis-decoding
            gold = [written, f"\\boxed{{{written}}}"] + ([value, f"\\boxed{{{value}}}"] if value != written else [])
            number = re.search(r"\d+(?:\.\d+)?", value)
            wrong = ([value[: number.start()] + w + value[number.end():] for w in _moved(number.group())]
                     if number else [])
        yield Item(record["sample_index"], row, gold, wrong)


def _free_form_value(answer: str) -> str:
    """What a model writes for a labelled free-form answer: ``Area $=9 \\pi \\mathrm{cm}^{2}$`` -> ``9 \\pi cm^2``."""
    text = re.sub(r"^(?:\\mathrm\{)?[A-Za-z][A-Za-z. ]*[A-Za-z.]\}?\s*=\s*", "", answer.replace("$", " ").strip()).strip()
    text = re.sub(r"\\mathrm\s*\{\s*~?\s*([A-Za-z]+)\s*\}", r" \1", text)
    return " ".join(text.replace("掳", "°").split())


def geometry3k_items(per_answer: dict[str, tuple[list[str], list[str]]] | None = None) -> Iterator[Item]:
    """Geometry3K (the release's JSONL): notations from :mod:`benchmarks.verifier_notations`."""
    from benchmarks.verifier_notations import _right, _wrong, parse_answer, real_answers

    answers = real_answers(REALDATA)
    parsed = {gold: parse_answer(gold) for gold in answers}
    others = sorted(parsed.items())
    rng = random.Random(0)
    keep_right = {"as-is", "latex", "text spaced", "unicode", "compact", "degree sign", "thousands"}
    for split in ("train", "val", "test"):
        path = REALDATA / "geometry3k" / "pepo_jsonl" / f"{split}.jsonl"
        for i, line in enumerate(path.read_text().splitlines()):
            solution = json.loads(line)["solution"]
            if per_answer is not None and solution not in per_answer:
                right = [text for kind, text in _right(solution, parsed[solution], answers[solution])
                         if kind in keep_right]
                right.append(f"\\boxed{{{right[1] if len(right) > 1 else right[0]}}}")
                wrong = _wrong(solution, parsed[solution], others, rng)
                picked = [w for kind, w in wrong if kind.startswith("perturbed")][:3] + \
                    [w for kind, w in wrong if kind.startswith("other")][:2]
                per_answer[solution] = (right, picked)
            gold, wrong = per_answer[solution] if per_answer is not None else ([solution], [])
            yield Item(f"{split}/{i}", {"answer": solution}, gold, wrong)


def refcoco_items() -> Iterator[Item]:
    """RefCOCO sample: boxes are COCO [x, y, w, h]; the scorer reads [x1, y1, x2, y2] (no images here, so the
    original pixels, and no image size)."""
    records = [json.loads(line) for line in (REALDATA / "refcoco" / "refs_gt_only.jsonl").read_text().splitlines()]
    boxes = []
    for r in records:
        x, y, w, h = r["gt_box_xywh"]
        boxes.append([x, y, x + w, y + h])
    for i, (record, box) in enumerate(zip(records, boxes)):
        x1, y1, x2, y2 = box
        w, h = x2 - x1, y2 - y1
        gold = [json.dumps(box), "[" + ", ".join(f"{v:.0f}" for v in box) + "]",
                json.dumps({"bbox_2d": [round(v) for v in box], "label": record["sent"]}),
                "[" + ",".join(f"{v:.1f}" for v in box) + "]"]
        wrong = [json.dumps([x2 + 5, y1, x2 + 5 + w, y2]),  # beside it: IoU 0
                 json.dumps([x1, y1, x1 + w / 2, y1 + h / 2]),  # a quarter of it: IoU 0.25
                 json.dumps([y1, x1, y2, x2]) if (x1, y1) != (y1, x1) else json.dumps([x1, y1, x1 + 1, y1 + 1])]
        wrong += [json.dumps(other) for other in boxes if _iou(other, box) < 0.5][:3]
        yield Item(str(i), {"answer": json.dumps(box)}, gold, wrong)


def _iou(a: list[float], b: list[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def class_items(folder: str) -> Iterator[Item]:
    """FGVC-Aircraft / Flowers102 class names (CLIP's lists): one item per class."""
    classes = json.loads((REALDATA / folder / "clip_classnames_templates.json").read_text())["classes"]
    for i, name in enumerate(classes):
        gold = [name, name.upper(), name.lower(), f"{name}.", f"the {name}", f"\\boxed{{{name}}}", f"**{name}**"]
        wrong = [other for other in classes if other != name]
        yield Item(str(i), {"answer": name}, gold, wrong)


TASK_ITEMS = {
    "geometry3k": ("geometry3k", lambda: geometry3k_items({})),
    "logicvista": ("logicvista", logicvista_items),
    "puzzlevqa": ("puzzlevqa", lambda: puzzle_items("puzzlevqa")),
    "algopuzzlevqa": ("algopuzzlevqa", lambda: puzzle_items("algopuzzlevqa")),
    "mathvista": ("mathvista", mathvista_items),
    "mathverse": ("mathverse", mathverse_items),
    "refcoco": ("refcoco", refcoco_items),
    "fgvc_aircraft": ("fgvc_aircraft", lambda: class_items("fgvc_aircraft")),
    "flower102": ("flowers102", lambda: class_items("flowers102")),
}


@contextlib.contextmanager
def patient_verifier(seconds: float = 60.0) -> Iterator[None]:
    """The ``accuracy`` reward with a long per-item time limit: on a loaded test machine the 2 s default turns a
    slow verification into a 0, which would be a scheduling result, not a scoring one (the limit itself is
    tested in tests/test_rewards.py)."""
    from pepo.rewards import REWARDS
    from pepo.rewards.math_accuracy import accuracy_reward

    saved = REWARDS["accuracy"]
    REWARDS["accuracy"] = functools.partial(accuracy_reward, timeout_seconds=seconds)
    try:
        yield
    finally:
        REWARDS["accuracy"] = saved


def run_task(task: str) -> TaskResult:
    """Score every real item of ``task`` with the task's own scorer (responses with identical rows are scored once)."""
    with patient_verifier():
        return _run_task(task)


def _run_task(task: str) -> TaskResult:
    from pepo.eval.tasks import TASKS, make_scorer

    folder, items = TASK_ITEMS[task]
    scorer = make_scorer(TASKS[task])
    result = TaskResult(task)
    cache: dict[tuple[str, tuple[str, ...]], list[float]] = {}
    for item in items():
        responses = item.gold + item.wrong
        key = (json.dumps(item.row, sort_keys=True), tuple(responses))
        if key not in cache:
            cache[key] = scorer([wrap(r) for r in responses], item.row)[0]
        scores = cache[key]
        gold_scores, wrong_scores = scores[: len(item.gold)], scores[len(item.gold):]
        result.items += 1
        result.gold_responses += len(gold_scores)
        result.wrong_responses += len(wrong_scores)
        result.gold_ok += all(s == 1.0 for s in gold_scores)
        result.wrong_accepted += any(s > 0 for s in wrong_scores)
        result.failures += [(item.id, "gold", r, s) for r, s in zip(item.gold, gold_scores) if s != 1.0]
        result.failures += [(item.id, "wrong", r, s) for r, s in zip(item.wrong, wrong_scores) if s > 0]
    if task == "logicvista":
        data = json.loads((REALDATA / "logicvista" / "dataset.json").read_text())
        result.skipped = [k for k, v in data.items() if not v["answer"].strip()]
    return result


def table(results: list[TaskResult]) -> str:
    lines = ["| task | items | gold answers scored 1 | wrong answers scored 1 | responses (gold / wrong) | skipped |",
             "|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.task} | {r.items} | {100 * r.gold_ok / r.items:.1f}% ({r.gold_ok}) | "
                     f"{100 * r.wrong_accepted / r.items:.1f}% ({r.wrong_accepted}) | "
                     f"{r.gold_responses} / {r.wrong_responses} | {', '.join(r.skipped) or '-'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[TaskResult]:
    tasks = (argv if argv is not None else sys.argv[1:]) or list(TASK_ITEMS)
    results = []
    for task in tasks:
        if not (REALDATA / TASK_ITEMS[task][0]).is_dir():
            print(f"{task}: skipped, {REALDATA / TASK_ITEMS[task][0]} is absent")
            continue
        results.append(run_task(task))
        for failure in results[-1].failures[:15]:
            print(f"  {task} {failure}")
    print(table(results))
    return results


if __name__ == "__main__":
    main()
