"""Uniform rows -> RL rows: the per-row machinery every task adapter shares.

A *uniform row* is what a format reader (:mod:`pepo.data.readers`) yields: a dict with an ``id``, image
reference(s) (a path, PIL image, ``{"bytes", "path"}`` dict, or a list of them), the question, the answer and
any other fields of the published file. A *location* column ``_where`` (e.g. ``"data/venn.json line 3"``) is
consumed here, so every error names the file and line. An *RL row* is what ``PEPOTrainer`` and ``pepo eval``
consume: ``prompt`` (conversational, question text first, then one image part per image), ``images`` (list of
PIL images), ``answer`` (str), ``id``; other fields are kept and reach reward functions as keyword arguments.

This module imports nothing from the readers or the adapters: readers -> rows -> adapters -> prompts.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import Any, Callable, Sequence

from datasets import Dataset
from PIL import Image

from pepo.data.errors import DataError, safe_join

__all__ = ["WHERE", "resolve_image", "question_text", "required_question", "make_prompt", "build_rows",
           "validate_rl_rows", "row_location"]

#: column a reader fills with each row's location in its file ("<file> line <n>,"); dropped from RL rows
WHERE = "_where"


def resolve_image(value: Any, image_root: str | None, where: str) -> Image.Image:
    """Load one image given as PIL, a datasets ``{"bytes", "path"}`` dict, or a file path.

    Relative paths resolve against ``image_root`` and may not leave it. Raises :class:`DataError`
    naming ``where`` (file/row/field) when the image is missing or unreadable.
    """
    try:
        if isinstance(value, Image.Image):
            return value.convert("RGB")
        if isinstance(value, dict) and value.get("bytes"):
            return Image.open(io.BytesIO(value["bytes"])).convert("RGB")
        if isinstance(value, dict) and value.get("path"):
            value = value["path"]
        if isinstance(value, (str, os.PathLike)) and str(value):
            path = Path(value)
            if not path.is_absolute():
                path = safe_join(Path(image_root or "."), str(value), where)
            if not path.is_file():
                raise DataError(f"{where}: image file {path} does not exist (set --image_root to its folder).")
            with Image.open(path) as im:
                return im.convert("RGB")
    except DataError:
        raise
    except Exception as err:  # PIL raises many types for corrupt files
        raise DataError(f"{where}: image could not be read ({type(err).__name__}: {err}).") from err
    raise DataError(f"{where}: no image (got {type(value).__name__}); every row needs an image.")


_IMAGE_PLACEHOLDER = re.compile(r"<image>\s*")


def question_text(value: Any) -> Any:
    """A question field may be plain text or a chat (``messages``, e.g. a TRL prompt): the last user
    turn's text, its text parts joined by spaces (image parts carry none). Other values unchanged."""
    if isinstance(value, list) and value and isinstance(value[0], dict):
        users = [m for m in value if m.get("role") == "user"] or value
        content = users[-1].get("content", "")
        if isinstance(content, list):
            content = " ".join(p["text"] for p in content if isinstance(p, dict) and p.get("text"))
        return content
    return value


def required_question(row: dict, column: str, where: str) -> str:
    """The row's question text (plain or chat ``messages``); DataError naming the field when empty."""
    question = question_text(row[column])
    if not isinstance(question, str) or not question.strip():
        raise DataError(f"{where}, field {column!r}: empty question.")
    return question


def make_prompt(question: str, n_images: int, instruction: str | None = None) -> list[dict]:
    """One user turn: the question (``<image>`` markers removed, ``instruction`` after a blank line), then
    ``n_images`` image parts."""
    # Question before the image(s): tiny models condition on the question far better this way, and
    # for large ones the order does not matter measurably. Dataset-side `<image>` markers (Geometry3K,
    # the release's JSONL) are dropped: the chat template inserts the model's own image tokens.
    text = _IMAGE_PLACEHOLDER.sub("", question).strip()
    if instruction:
        text = f"{text}\n\n{instruction}"
    content = [{"type": "text", "text": text}] + [{"type": "image"} for _ in range(n_images)]
    return [{"role": "user", "content": content}]


def row_location(row: dict, split: str, index: int) -> str:
    """``"<file> line 3, row 2 (id v1_2)"`` (or ``"split 'train' row 2 (id 2)"`` for rows without a location)."""
    row_id = str(row.get("id", index))
    prefix = row.get(WHERE)
    return f"{prefix} row {index} (id {row_id})" if prefix else f"split {split!r} row {index} (id {row_id})"


def _image_refs(value: Any) -> list:
    if value is None or (isinstance(value, str) and not value.strip()):
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def build_rows(
    dataset: Dataset,
    split: str,
    required: Sequence[str],
    image_column: str,
    make_record: Callable[[dict, list[Image.Image | None], str], dict],
    image_root: str | None = None,
    skip_invalid_rows: bool = False,
    consumed: Sequence[str] = (),
    column_hint: str = "Map yours with --image_column / --question_column / --answer_column.",
    with_images: bool = True,
) -> tuple[Dataset, int]:
    """The per-row machinery every task adapter shares; returns ``(rows, n_skipped)``.

    Checks the ``required`` columns exist, then for each row: duplicate ``id``, image loading (see
    :func:`resolve_image`: missing, unreadable, or escaping ``image_root``), and the adapter's own checks in
    ``make_record(row, images, where)``, which returns the row's ``prompt``/``answer``/extra fields or raises
    :class:`DataError` naming ``where`` and the field. With ``skip_invalid_rows`` a failing row is skipped and
    counted instead of raising. Columns neither in ``consumed`` nor holding PIL images are kept as extras
    (they reach reward functions as keyword arguments); the record's own fields win over them.

    ``with_images=False`` builds prompts without opening any image (``images`` is then ``[]`` and
    ``make_record`` gets one ``None`` per image reference; a row without an image reference is allowed):
    for scoring responses generated elsewhere, and for checking a published file whose images you lack.
    """
    missing = [c for c in dict.fromkeys(required) if c not in dataset.column_names]
    if missing:
        columns = [c for c in dataset.column_names if c != WHERE]
        raise DataError(f"split {split!r}: column(s) {missing} not found; columns are {columns}. {column_hint}")
    dropped = set(consumed) | {image_column, "id", WHERE}
    records, skipped, seen = [], 0, set()
    for i, row in enumerate(dataset):
        row_id = str(row.get("id", i))
        where = row_location(row, split, i)
        try:
            if row_id in seen:
                raise DataError(f"{where}: duplicate id {row_id!r}.")
            refs = _image_refs(row[image_column])
            if with_images:
                if not refs:
                    raise DataError(f"{where}, field {image_column!r}: no image; every row needs an image.")
                images = [resolve_image(v, image_root, f"{where}, field {image_column!r}") for v in refs]
            else:
                images = [None] * len(refs)
            record = make_record(row, images, where)
        except DataError:
            if not skip_invalid_rows:
                raise
            skipped += 1
            continue
        seen.add(row_id)
        extra = {k: v for k, v in row.items() if k not in dropped and not isinstance(v, Image.Image)}
        records.append({"id": row_id, **extra, **record, "images": images if with_images else []})
    if not records:
        raise DataError(f"split {split!r}: no valid rows ({skipped} skipped).")
    return Dataset.from_list(records), skipped


def validate_rl_rows(dataset: Dataset, split: str) -> None:
    """Check rows already in RL form (``prompt``, ``images``, ``answer``); raise :class:`DataError` otherwise."""
    for field in ("prompt", "images", "answer"):
        if field not in dataset.column_names:
            raise DataError(f"split {split!r}: column {field!r} missing; columns are {dataset.column_names}.")
    for i, row in enumerate(dataset):
        if not row["images"]:
            raise DataError(f"split {split!r} row {i}, field 'images': no image.")
        if not str(row["answer"]).strip():
            raise DataError(f"split {split!r} row {i}, field 'answer': empty answer.")
        n_parts = sum(
            1 for m in row["prompt"] for p in (m["content"] if isinstance(m["content"], list) else [])
            if p.get("type") == "image"
        )
        if n_parts != len(row["images"]):
            raise DataError(
                f"split {split!r} row {i}, field 'prompt': {n_parts} image placeholders for {len(row['images'])} images."
            )
