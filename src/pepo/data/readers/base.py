"""What every format reader returns, and the file parsing they share (JSON with line numbers)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datasets import Dataset

from pepo.data.errors import DataError, safe_join

__all__ = ["Source", "CANONICAL", "read_json", "read_json_lines", "rows_to_dataset", "image_path", "as_text"]

#: column names of the uniform rows the published-format readers yield
CANONICAL = {"image_column": "image", "question_column": "question", "answer_column": "answer",
             "options_column": "options"}


@dataclass
class Source:
    """A dataset as read from its published files, before any task adapter.

    ``splits`` maps split name -> uniform rows (see :mod:`pepo.data.rows`). ``single`` means the files have no
    splits: the one dataset serves whatever split is asked. ``canonical`` means the reader chose the column names, given in
    ``columns`` (:data:`CANONICAL`, or the published field names where they differ, so that errors name the field
    as the file does); ``False`` for tables, whose columns the options name.
    ``adapter`` is the task adapter the rows need (``None``: any). ``image_root`` is where relative image paths
    of a table resolve.
    """

    format: str
    path: str
    splits: dict[str, Dataset]
    single: bool = False
    canonical: bool = True
    columns: dict[str, str] = field(default_factory=lambda: dict(CANONICAL))
    adapter: str | None = None
    detail: str = ""
    image_root: str | None = None
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return self.format + (f" ({self.detail})" if self.detail else "")


def as_text(value: Any) -> str:
    """A field as text: strings stripped of nothing, numbers as written (``4`` not ``4.0`` for ints)."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _json_error(path: Path, err: json.JSONDecodeError, line: int | None = None) -> DataError:
    where = f"{path} line {line if line is not None else err.lineno}"
    return DataError(f"{where}: not valid JSON ({err.msg}, column {err.colno}); fix or remove that line.")


def read_json_lines(path: Path) -> list[tuple[int, dict]]:
    """``[(line number, object), ...]`` of a JSON Lines file (blank lines skipped).

    Raises :class:`DataError` naming the file and line for a malformed line or a line that is not an object.
    """
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise _json_error(path, err, n) from None
            if not isinstance(obj, dict):
                raise DataError(f"{path} line {n}: expected a JSON object (one row per line), got "
                                f"{type(obj).__name__}.")
            out.append((n, obj))
    if not out:
        raise DataError(f"{path}: the file holds no rows.")
    return out


def read_json(path: Path) -> Any:
    """A ``.json`` file: the parsed document, or ``[(line, object), ...]`` tagged ``("jsonl", rows)`` when the file
    is JSON Lines under a ``.json`` name (PuzzleVQA's files). Malformed JSON raises :class:`DataError` with the line.
    """
    text = Path(path).read_text(encoding="utf-8")
    try:
        return json.loads(text)
    except json.JSONDecodeError as whole:
        first = text.lstrip().split("\n", 1)[0]
        try:
            is_lines = isinstance(json.loads(first), dict) and "\n" in text.strip()
        except json.JSONDecodeError:
            is_lines = False
        if is_lines:
            return ("jsonl", read_json_lines(path))
        raise _json_error(path, whole) from None


def rows_to_dataset(rows: list[dict]) -> Dataset:
    """A :class:`datasets.Dataset` of ``rows``; a column whose values mix types (an ``answer`` that is an int in
    one row and a string in the next) or whose dicts differ in shape is stored as text (JSON for containers),
    so Arrow accepts it. Keys missing in some rows become ``None``."""
    if not rows:
        return Dataset.from_list([])
    keys = list(dict.fromkeys(k for r in rows for k in r))
    columns = {k: [r.get(k) for r in rows] for k in keys}
    try:
        return Dataset.from_dict(columns)
    except Exception:  # Arrow could not unify a column: fall back column by column
        pass
    fixed = {}
    for k, values in columns.items():
        try:
            Dataset.from_dict({k: values})
            fixed[k] = values
        except Exception:
            fixed[k] = [None if v is None else v if isinstance(v, str) else json.dumps(v) if isinstance(
                v, (dict, list)) else as_text(v) for v in values]
    return Dataset.from_dict(fixed)


def image_path(base: Path, relative: Any, where: str) -> str | None:
    """The absolute path of an image named in a data file relative to ``base`` (``None`` if the field is empty).
    A path leaving ``base`` raises :class:`DataError`; a missing file is reported later, when the row is built."""
    if relative is None or (isinstance(relative, str) and not relative.strip()):
        return None
    if not isinstance(relative, str):
        raise DataError(f"{where}: image must be a path string, got {type(relative).__name__}.")
    if Path(relative).is_absolute():
        return relative
    return str(safe_join(base, relative, where))
