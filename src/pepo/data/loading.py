"""Turn any question/image/answer dataset into RL rows, validated before training starts.

Output rows (the format ``PEPOTrainer`` consumes): ``prompt`` (conversational, question text
first, then one image part per image), ``images`` (list of PIL images), ``answer`` (str), ``id``.
Other columns are kept and reach the reward functions as keyword arguments, as in TRL.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import Any, Callable, Sequence

from datasets import Dataset, DatasetDict, load_dataset
from PIL import Image

__all__ = ["DataError", "resolve_image", "build_rows", "to_rl_rows", "load_rl_data", "validate_rl_rows"]


class DataError(ValueError):
    """A dataset row that cannot be trained on; the message names split, row and field."""


def _safe_join(root: Path, relative: str, where: str) -> Path:
    root = root.resolve()
    path = (root / relative).resolve()
    if os.path.commonpath([root, path]) != str(root):
        raise DataError(f"{where}: image path {relative!r} escapes image_root {root}; refusing to read it.")
    return path


def resolve_image(value: Any, image_root: str | None, where: str) -> Image.Image:
    """Load one image given as PIL, a datasets ``{"bytes", "path"}`` dict, or a file path.

    Relative paths resolve against ``image_root`` and may not leave it. Raises :class:`DataError`
    naming ``where`` (split/row/field) when the image is missing or unreadable.
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
                path = _safe_join(Path(image_root or "."), str(value), where)
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


def _prompt(question: str, n_images: int, instruction: str | None = None) -> list[dict]:
    # Question before the image(s): tiny models condition on the question far better this way, and
    # for large ones the order does not matter measurably. Dataset-side `<image>` markers (Geometry3K,
    # the release's JSONL) are dropped: the chat template inserts the model's own image tokens.
    text = _IMAGE_PLACEHOLDER.sub("", question).strip()
    if instruction:
        text = f"{text}\n\n{instruction}"
    content = [{"type": "text", "text": text}] + [{"type": "image"} for _ in range(n_images)]
    return [{"role": "user", "content": content}]


def build_rows(
    dataset: Dataset,
    split: str,
    required: Sequence[str],
    image_column: str,
    make_record: Callable[[dict, list[Image.Image], str], dict],
    image_root: str | None = None,
    skip_invalid_rows: bool = False,
    consumed: Sequence[str] = (),
    column_hint: str = "Map yours with --image_column / --question_column / --answer_column.",
    with_images: bool = True,
) -> tuple[Dataset, int]:
    """The per-row machinery every dataset format shares; returns ``(rows, n_skipped)``.

    Checks the ``required`` columns exist, then for each row: duplicate ``id``, image loading (see
    :func:`resolve_image`: missing, unreadable, or escaping ``image_root``), and the format's own checks in
    ``make_record(row, images, where)``, which returns the row's ``prompt``/``answer``/extra fields or raises
    :class:`DataError` naming ``where`` and the field. With ``skip_invalid_rows`` a failing row is skipped and
    counted instead of raising. Columns neither in ``consumed`` nor holding PIL images are kept as extras
    (they reach reward functions as keyword arguments); the record's own fields win over them.

    ``with_images=False`` opens no image: ``make_record`` gets one ``None`` per image reference (so the
    prompt still has its image parts) and the row's ``images`` is ``[]``; for scoring responses generated
    elsewhere (``pepo eval --responses``), where the images may not be on this machine.
    """
    missing = [c for c in dict.fromkeys(required) if c not in dataset.column_names]
    if missing:
        raise DataError(f"split {split!r}: column(s) {missing} not found; columns are {dataset.column_names}. {column_hint}")
    dropped = set(consumed) | {image_column, "id"}
    records, skipped, seen = [], 0, set()
    for i, row in enumerate(dataset):
        row_id = str(row.get("id", i))
        where = f"split {split!r} row {i} (id {row_id})"
        try:
            if row_id in seen:
                raise DataError(f"{where}: duplicate id {row_id!r}.")
            raw_images = row[image_column]
            raw_images = raw_images if isinstance(raw_images, list) else [raw_images]
            if not raw_images:
                raise DataError(f"{where}, field {image_column!r}: empty image list; every row needs an image.")
            if with_images:
                images = [resolve_image(v, image_root, f"{where}, field {image_column!r}") for v in raw_images]
            else:
                images = [None] * len(raw_images)
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


def to_rl_rows(
    dataset: Dataset,
    split: str,
    image_column: str = "image",
    question_column: str = "question",
    answer_column: str = "answer",
    image_root: str | None = None,
    skip_invalid_rows: bool = False,
    instruction: str | None = None,
    with_images: bool = True,
) -> tuple[Dataset, int]:
    """Map a raw dataset to RL rows, validating every row (the ``generic`` dataset format).

    Returns:
        ``(rows, n_skipped)``. Without ``skip_invalid_rows`` the first invalid row raises
        :class:`DataError` naming split, row index, id and field.
    """

    def make_record(row: dict, images: list[Image.Image], where: str) -> dict:
        question = required_question(row, question_column, where)
        answer = row[answer_column]
        if answer is None or not str(answer).strip():
            raise DataError(f"{where}, field {answer_column!r}: empty answer; rewards need a ground truth.")
        return {"prompt": _prompt(question, len(images), instruction), "answer": str(answer)}

    return build_rows(
        dataset, split, (image_column, question_column, answer_column), image_column, make_record,
        image_root, skip_invalid_rows, consumed=(question_column, answer_column), with_images=with_images,
    )


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


def _load_raw(dataset: str, config: str | None) -> DatasetDict:
    path = Path(dataset)
    if path.is_file():
        builder = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}.get(path.suffix)
        if builder is None:
            raise DataError(f"dataset {dataset}: unsupported file type {path.suffix!r} (use .jsonl, .json, .parquet).")
        return load_dataset(builder, data_files={"train": str(path)})
    if path.is_dir():
        return load_dataset(str(path), config)
    if dataset.startswith((".", "/", "~")):
        raise DataError(f"dataset {dataset}: no such file or folder.")
    return load_dataset(dataset, config)  # hub id (needs network or a local HF cache)


def load_rl_data(args: Any, seed: int = 0) -> tuple[DatasetDict, dict[str, int]]:
    """Load ``args.dataset`` (see :class:`pepo.config.ScriptArguments`) as validated RL rows.

    ``args.dataset_format`` picks the adapter: ``generic`` (:func:`to_rl_rows`), or ``grounding``,
    ``classification``, ``multiple_choice`` (see :mod:`pepo.data.adapters`). ``seed`` drives k-shot sampling.

    Returns:
        ``(splits, skipped)``: a DatasetDict with ``train`` and, if configured, ``test``; and the
        number of invalid rows skipped per split.
    """
    from pepo.data.adapters import check_dataset_format, load_classification_raw, make_adapter

    dataset_format = check_dataset_format(getattr(args, "dataset_format", "generic"))
    if args.dataset == "synthetic":
        if dataset_format != "generic":
            raise DataError(f"dataset synthetic: dataset_format must be 'generic', got {dataset_format!r}.")
        from pepo.data.synthetic import make_splits

        raw = make_splits(args.num_train, args.num_test, seed=seed)
        out = DatasetDict({name: split.map(lambda r: {"images": [r["image"]]}, remove_columns=["image"])
                           for name, split in raw.items()})
        for name, split in out.items():
            validate_rl_rows(split, name)
        return out, {name: 0 for name in out}
    raw = None
    if dataset_format == "classification":
        raw = load_classification_raw(args)  # an image folder root/[split/]<class>/*.jpg, else None
    if raw is None:
        raw = _load_raw(args.dataset, args.dataset_config)
    test_split = None if str(args.test_split).lower() in ("", "none") else args.test_split
    wanted = [args.train_split] + ([test_split] if test_split else [])
    for split in wanted:
        if split not in raw:
            raise DataError(f"dataset {args.dataset}: split {split!r} not found; available: {list(raw)}.")
    adapt = None if dataset_format == "generic" else make_adapter(dataset_format, args, raw[args.train_split], seed)
    out, skipped = DatasetDict(), {}
    for role, split in zip(("train", "test"), wanted):
        data = raw[split]
        if role == "test" and args.num_test and len(data) > args.num_test:
            data = data.select(range(args.num_test))
        if adapt is not None:
            out[role], skipped[role] = adapt(data, split, role)
            continue
        out[role], skipped[role] = to_rl_rows(
            data, split, args.image_column, args.question_column, args.answer_column,
            args.image_root, getattr(args, "skip_invalid_rows", False), getattr(args, "prompt_instruction", None),
            with_images=getattr(args, "with_images", True),
        )
    return out, skipped
