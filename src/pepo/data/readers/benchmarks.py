"""Readers for the published files of the paper's reasoning benchmarks, exactly as their authors release them.

Each returns a :class:`~pepo.data.readers.base.Source` of uniform rows: ``id`` (the item's id as the file names
it), ``image`` (absolute path(s)), ``question``, ``answer`` (text), the format's own fields, and ``_where``
(file and line or key, for error messages). Schemas: see ``../shared/realdata/*/PROVENANCE.md`` and the README's
"Formats we read" table.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pepo.data.errors import DataError
from pepo.data.readers.base import CANONICAL, Source, as_text, image_path, read_json, read_json_lines, rows_to_dataset
from pepo.data.rows import WHERE, question_text

__all__ = ["read_geometry3k_release", "read_intergps", "read_logicvista", "read_puzzlevqa", "read_mathvista",
           "read_mathverse", "mathverse_choices", "PUZZLE_KEYS"]

#: fields of a PuzzleVQA / AlgoPuzzleVQA row
PUZZLE_KEYS = {"image", "question", "options", "answer"}


def _require(obj: dict, fields: tuple[str, ...], where: str) -> None:
    for name in fields:
        if name not in obj:
            raise DataError(f"{where}, field {name!r}: missing (the item has {sorted(obj)}).")


def _records(path: Path, data: Any, what: str) -> list[tuple[str, dict]]:
    """``[(location, object), ...]`` of a JSON list or JSON Lines document; anything else is a named error."""
    if isinstance(data, tuple) and data and data[0] == "jsonl":
        return [(f"{path} line {n},", obj) for n, obj in data[1]]
    if isinstance(data, list):
        out = []
        for i, obj in enumerate(data):
            if not isinstance(obj, dict):
                raise DataError(f"{path} item {i}: expected an object ({what}), got {type(obj).__name__}.")
            out.append((f"{path} item {i},", obj))
        return out
    raise DataError(f"{path}: expected a list of {what} (or one JSON object per line), got {type(data).__name__}.")


def _keyed(path: Path, data: Any, what: str) -> list[tuple[str, dict]]:
    """``[(key, object), ...]`` of an object keyed by item id (LogicVista, MathVista)."""
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected an object keyed by item id ({what}), got {type(data).__name__}.")
    for key, obj in data.items():
        if not isinstance(obj, dict):
            raise DataError(f"{path} id {key}: expected an object, got {type(obj).__name__}.")
    return list(data.items())


# ----------------------------------------------------------------------------------------------- Geometry3K


def _geometry3k_id(paths: list[str], fallback: int) -> str:
    """The Geometry3K problem id: the folder of ``Geometry3K/<split>/<id>/img_diagram.png``, else the file stem."""
    if not paths:
        return str(fallback)
    p = Path(paths[0])
    return p.parent.name if p.stem == "img_diagram" and p.parent.name else p.stem


def _release_rows(path: Path, base: Path) -> list[dict]:
    data = read_json(path) if path.suffix == ".json" else ("jsonl", read_json_lines(path))
    rows = []
    for i, (loc, obj) in enumerate(_records(path, data, "Geometry3K rows")):
        _require(obj, ("images", "messages", "solution"), loc.rstrip(","))
        if not isinstance(obj["images"], list):
            raise DataError(f"{loc} field 'images': expected a list of image paths, got {type(obj['images']).__name__}.")
        if not isinstance(obj["messages"], list):
            raise DataError(f"{loc} field 'messages': expected a list of chat turns, got "
                            f"{type(obj['messages']).__name__}.")
        images = [image_path(base, p, f"{loc} field 'images'") for p in obj["images"]]
        rows.append({"id": _geometry3k_id(obj["images"], i), "images": [p for p in images if p],
                     "messages": question_text(obj["messages"]) or "", "solution": as_text(obj["solution"]),
                     WHERE: loc})
    return rows


def release_files(folder: Path) -> list[Path]:
    """The ``<split>.jsonl`` files of a folder holding the release's Geometry3K files (``train``/``val``/``test``)."""
    return sorted(f for f in folder.iterdir() if f.is_file() and f.suffix == ".jsonl")


def read_geometry3k_release(path: Path, image_root: str | None) -> Source:
    """The paper release's JSONL (``images`` list, ``messages`` with one user turn, ``solution``); image paths
    are relative to ``image_root`` (default: the file's folder). ``id`` = the Geometry3K problem id. A folder of
    such files (the release's ``data/geometry3k/``) has one split per file (``train``, ``val``, ``test``)."""
    columns = {"image_column": "images", "question_column": "messages", "answer_column": "solution"}
    if path.is_dir():
        base = Path(image_root) if image_root else path
        splits = {f.stem: rows_to_dataset(_release_rows(f, base)) for f in release_files(path)}
        if not splits:
            raise DataError(f"{path}: no <split>.jsonl files of the release's Geometry3K format here.")
        return Source("geometry3k_release", str(path), splits, columns=columns,
                      detail=f"images / messages / solution, splits {sorted(splits)}")
    base = Path(image_root) if image_root else path.parent
    return Source("geometry3k_release", str(path), {"all": rows_to_dataset(_release_rows(path, base))},
                  single=True, columns=columns, detail="images / messages / solution")


def _intergps_problem(folder: Path) -> dict:
    where = f"{folder / 'data.json'}"
    data = read_json(folder / "data.json")
    if not isinstance(data, dict):
        raise DataError(f"{where}: expected an object, got {type(data).__name__}.")
    _require(data, ("problem_text", "choices", "answer"), where)
    choices = data["choices"]
    if not isinstance(choices, list) or not choices:
        raise DataError(f"{where}, field 'choices': expected a list of the options, got {choices!r}.")
    letter = str(data["answer"]).strip().upper()
    index = ord(letter) - ord("A") if len(letter) == 1 and letter.isalpha() else -1
    if not 0 <= index < len(choices):
        raise DataError(f"{where}, field 'answer': {data['answer']!r} is not among the options "
                        f"(a letter A-{chr(ord('A') + len(choices) - 1)} naming one of {choices}).")
    return {"id": as_text(data.get("id", folder.name)), "image": str(folder / "img_diagram.png"),
            "question": as_text(data["problem_text"]), "answer": as_text(choices[index]),
            "choices": [as_text(c) for c in choices], "answer_letter": letter, WHERE: f"{where},"}


def _problem_folders(folder: Path) -> list[Path]:
    found = [d for d in folder.iterdir() if d.is_dir() and (d / "data.json").is_file()]
    return sorted(found, key=lambda d: (not d.name.isdigit(), int(d.name) if d.name.isdigit() else 0, d.name))


def read_intergps(path: Path, image_root: str | None) -> Source:
    """InterGPS' Geometry3K release: ``<split>/<id>/data.json`` + ``img_diagram.png`` (one split when ``path`` is
    itself a split folder). ``answer`` = the choice named by the answer letter; ``id`` = ``data.json``'s id."""
    splits = {d.name: d for d in sorted(path.iterdir()) if d.is_dir() and _problem_folders(d)}
    single = not splits
    if single:
        splits = {"all": path}
    out = {}
    for name, folder in splits.items():
        out[name] = rows_to_dataset([_intergps_problem(d) for d in _problem_folders(folder)])
    return Source("intergps", str(path), out, single=single, detail="<split>/<id>/data.json + img_diagram.png")


# ----------------------------------------------------------------------------------------------- LogicVista


def read_logicvista(path: Path, image_root: str | None) -> Source:
    """LogicVista's ``dataset.json``: an object keyed by id, ``imagename`` under ``image_root`` (default: the
    ``images/`` folder next to the file). Answers are letters (some several, ``A, C``). An item with neither a
    question nor an answer (the published file has one, ``v1_382``) is skipped with a note."""
    base = Path(image_root) if image_root else path.parent / "images"
    rows, empty = [], []
    for key, obj in _keyed(path, read_json(path), "LogicVista items"):
        where = f"{path} id {key}"
        if not str(obj.get("question", "")).strip() and not str(obj.get("answer", "")).strip():
            empty.append(key)
            continue
        _require(obj, ("imagename", "question", "answer"), where)
        rows.append({"id": str(key), "imagename": image_path(base, obj["imagename"], f"{where}, field 'imagename'"),
                     "question": as_text(obj["question"]), "answer": as_text(obj["answer"]),
                     **{k: obj[k] for k in ("skill", "broad_capability", "specific_capability") if k in obj},
                     WHERE: f"{where},"})
    source = Source("logicvista", str(path), {"all": rows_to_dataset(rows)}, single=True,
                    columns={**CANONICAL, "image_column": "imagename"}, detail="object keyed by id, imagename under images/")
    if empty:
        source.notes.append(f"skipped {len(empty)} empty item(s) of {path.name} (no question, no answer): "
                            f"{', '.join(empty)}")
    return source


# ----------------------------------------------------------------------------------------------- PuzzleVQA


def puzzle_files(folder: Path) -> list[Path]:
    """The per-category files of a PuzzleVQA / AlgoPuzzleVQA data folder, sorted by file name."""
    return sorted((f for f in folder.iterdir() if f.is_file() and f.suffix in (".json", ".jsonl")),
                  key=lambda f: f.name)


def read_puzzlevqa(path: Path, image_root: str | None) -> Source:
    """PuzzleVQA / AlgoPuzzleVQA: per-category JSON Lines files (named ``.json``); a folder of them is one
    dataset, rows in sorted file-name order. ``image`` is relative to the data folder (``image_root``
    overrides); ``options`` ints or strings and ``answer`` (the option text, maybe of another type) become text.
    ``id`` = the 0-based row index over the whole dataset; ``category`` = the file's stem."""
    files = puzzle_files(path) if path.is_dir() else [path]
    base = Path(image_root) if image_root else (path if path.is_dir() else path.parent)
    rows = []
    for f in files:
        data = read_json(f) if f.suffix == ".json" else ("jsonl", read_json_lines(f))
        if isinstance(data, dict):  # a one-line file parses as one object
            data = ("jsonl", [(1, data)])
        for loc, obj in _records(f, data, "puzzle rows"):
            _require(obj, ("image", "question", "options", "answer"), loc.rstrip(","))
            options = obj["options"]
            if not isinstance(options, list):
                raise DataError(f"{loc} field 'options': expected a list, got {type(options).__name__}.")
            row = {"id": str(len(rows)), "image": image_path(base, obj["image"], f"{loc} field 'image'"),
                   "question": as_text(obj["question"]), "options": [as_text(o) for o in options],
                   "answer": as_text(obj["answer"]), "category": obj.get("category", f.stem)}
            for k in ("caption", "explanation", "deduction"):
                if k in obj:
                    row[k] = as_text(obj[k])
            if "solution" in obj:  # puzzle-specific dict, a different shape per category: kept as JSON text
                row["solution"] = json.dumps(obj["solution"])
            row[WHERE] = loc
            rows.append(row)
    detail = f"{len(files)} per-category file(s)" if path.is_dir() else "per-category JSON Lines"
    return Source("puzzlevqa", str(path), {"all": rows_to_dataset(rows)}, single=True, adapter="multiple_choice",
                  detail=detail)


# ----------------------------------------------------------------------------------------------- MathVista


def _mathvista_query(item: dict) -> str:
    """A prompt in the shape of MathVista's official query when its ``query.json`` is not at hand."""
    text = as_text(item.get("question"))
    if item.get("unit"):
        text += f" (Unit: {item['unit']})"
    choices = item.get("choices") or []
    if choices:
        text += "\nChoices:\n" + "\n".join(f"({chr(ord('A') + i)}) {c}" for i, c in enumerate(choices))
    return text


def read_mathvista(path: Path, image_root: str | None) -> Source:
    """MathVista's ``testmini.json`` (or ``test.json``): an object keyed by ``pid``. The question is the official
    prompt from ``query.json`` / ``query_<name>.json`` next to it when present, else the question with its
    choices listed as ``(A) ...``. ``image`` (``images/<pid>.jpg``) is relative to ``image_root`` (default: the
    file's folder). Kept for the scorer: ``choices``, ``question_type``, ``answer_type``, ``precision``, ``unit``."""
    base = Path(image_root) if image_root else path.parent
    queries: dict = {}
    query_file = next((q for q in (path.parent / f"query_{path.stem}.json", path.parent / "query.json")
                       if q.is_file()), None)
    if query_file is not None:
        queries = read_json(query_file)
        if not isinstance(queries, dict):
            raise DataError(f"{query_file}: expected an object keyed by pid, got {type(queries).__name__}.")
    rows = []
    for key, item in _keyed(path, read_json(path), "MathVista items"):
        where = f"{path} pid {key}"
        _require(item, ("question", "image", "answer", "question_type"), where)
        choices = item.get("choices")
        if choices is not None and not isinstance(choices, list):
            raise DataError(f"{where}, field 'choices': expected a list or null, got {type(choices).__name__}.")
        precision = item.get("precision")
        rows.append({
            "id": as_text(item.get("pid", key)), "image": image_path(base, item["image"], f"{where}, field 'image'"),
            "question": as_text(queries.get(key)) if key in queries else _mathvista_query(item),
            "answer": as_text(item["answer"]), "choices": [as_text(c) for c in choices] if choices else None,
            "question_type": item["question_type"], "answer_type": item.get("answer_type", "text"),
            "precision": float(precision) if precision is not None else None, "unit": item.get("unit"),
            WHERE: f"{where},",
        })
    detail = f"keyed by pid, prompts from {query_file.name}" if query_file else "keyed by pid, no query.json found: " \
        "prompts built from question + choices"
    return Source("mathvista", str(path), {"all": rows_to_dataset(rows)}, single=True, detail=detail)


# ----------------------------------------------------------------------------------------------- MathVerse


_CHOICES_HEAD = re.compile(r"\bChoices?\s*:\s*\n")
_CHOICE_LINE = re.compile(r"([A-H])\s*[:.]\s*(.*?)\s*")


def mathverse_choices(question: str) -> list[str]:
    """The options MathVerse writes inside its question (``Choices:\\nA:40°\\nB:60°``, ``Choice:\\nA. True``),
    A first; a line that starts no new option continues the previous one, except a bare number (testmini has two
    stray ones, ``102`` and ``127`` after the last options of items 99 and 124). ``[]`` when there are none."""
    head = _CHOICES_HEAD.search(question)
    options: list[str] = []
    for line in question[head.end():].splitlines() if head else []:
        match = _CHOICE_LINE.fullmatch(line.strip())
        if match and match.group(1) == chr(ord("A") + len(options)):
            options.append(match.group(2))
        elif options and not line.strip().isdigit():
            options[-1] = f"{options[-1]} {line.strip()}".strip()
    return options


def read_mathverse(path: Path, image_root: str | None) -> Source:
    """MathVerse's ``testmini.json`` / ``testmini_text_only.json``: a list of items with ``sample_index`` (the id),
    ``question`` (choices written inside it; for Vision Only items, whose question is drawn in the image, the file's
    ``query_wo`` prompt), ``question_type`` (``multi-choice`` / ``free-form``) and ``answer``
    as published (``(C)``, ``A\\nC``, ``False``, units); ``choices`` = the options (a ``choices`` field when the
    copy has one, else parsed from the question; None for free-form items), ``choices_source`` says which.
    ``image`` is relative to ``image_root`` (default: the
    file's folder); Text Only items have none."""
    base = Path(image_root) if image_root else path.parent
    rows = []
    for loc, item in _records(path, read_json(path), "MathVerse items"):
        _require(item, ("sample_index", "question", "answer", "question_type"), loc.rstrip(","))
        where = f"{loc.rstrip(',')} (sample_index {item['sample_index']})"
        image = image_path(base, item.get("image"), f"{where}, field 'image'")
        question = as_text(item["question"])
        if not question.strip() and item.get("problem_version") == "Vision Only":
            # the question is drawn in the image; the file's own prompt without CoT says so
            question = as_text(item.get("query_wo"))
        # the options reach the scorer: a copy's own ``choices`` field, else those written in the question
        field = item.get("choices")
        if field is not None and not isinstance(field, list):
            raise DataError(f"{where}, field 'choices': expected a list of option texts or null, got "
                            f"{type(field).__name__}.")
        choices = [as_text(c) for c in field] if field else mathverse_choices(question)
        rows.append({"id": as_text(item["sample_index"]), "image": image, "question": question,
                     "answer": as_text(item["answer"]), "question_type": item["question_type"],
                     "choices": choices or None, "choices_source": "field" if field else "question",
                     "problem_index": as_text(item.get("problem_index")),
                     "problem_version": item.get("problem_version"), WHERE: loc})
    source = Source("mathverse", str(path), {"all": rows_to_dataset(rows)}, single=True,
                    detail="list with sample_index")
    text_only = sum(1 for r in rows if r["image"] is None)
    if text_only:
        source.notes.append(f"{text_only} of {len(rows)} items have no image (MathVerse's Text Only version)")
    return source
