"""Load a dataset as validated RL rows: format reader -> uniform rows -> task adapter -> prompts.

:func:`load_data` reads ``args.dataset`` with the reader of its published format (:mod:`pepo.data.readers`,
detected or forced with ``--source_format``), picks the splits asked for (a dataset without splits serves any
split, with a note), and builds RL rows with the task adapter ``--dataset_format`` names
(:mod:`pepo.data.adapters`). Output rows (the format ``PEPOTrainer`` consumes): ``prompt`` (conversational,
question text first, then one image part per image), ``images`` (list of PIL images), ``answer`` (str), ``id``.
Other columns are kept and reach the reward functions as keyword arguments, as in TRL.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from datasets import DatasetDict

from pepo.data.adapters import check_dataset_format, make_adapter, to_rl_rows
from pepo.data.errors import DataError
from pepo.data.readers import read_source
from pepo.data.rows import (
    build_rows,
    make_prompt,
    question_text,
    required_question,
    resolve_image,
    validate_rl_rows,
)

__all__ = ["DataError", "LoadedData", "resolve_image", "build_rows", "to_rl_rows", "load_data", "load_rl_data",
           "validate_rl_rows", "question_text", "required_question", "write_data_record", "DATA_RECORD"]

_prompt = make_prompt  # the name older code imports

#: the two spellings of the validation split (Hugging Face copies say validation, the release files val)
_SPLIT_ALIASES = {"validation": "val", "val": "validation"}

#: file written into every run / eval / analysis folder: where the rows came from and how they were read
DATA_RECORD = "data.json"


@dataclass
class LoadedData:
    """Validated RL rows per role (``train`` and, if asked, ``test``) and how they were read."""

    splits: DatasetDict
    skipped: dict[str, int]
    dataset: str
    source_format: str
    detail: str = ""
    dataset_format: str = "generic"
    split_names: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        """What :data:`DATA_RECORD` holds (JSON-ready)."""
        return {"dataset": self.dataset, "source_format": self.source_format, "detail": self.detail,
                "dataset_format": self.dataset_format, "splits": self.split_names,
                "rows": {role: len(rows) for role, rows in self.splits.items()}, "skipped": self.skipped,
                "notes": self.notes}


def write_data_record(folder: str | Path, loaded: LoadedData) -> Path:
    """Write :data:`DATA_RECORD` into ``folder`` (created if needed); returns its path."""
    path = Path(folder) / DATA_RECORD
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(loaded.record(), indent=2) + "\n")
    return path


def _synthetic(args: Any, seed: int, dataset_format: str) -> LoadedData:
    if dataset_format != "generic":
        raise DataError(f"dataset synthetic: dataset_format must be 'generic', got {dataset_format!r}.")
    from pepo.data.synthetic import make_splits

    raw = make_splits(args.num_train, args.num_test, seed=seed)
    # --num_test 0: no held-out split (nothing scored before / after RL), not an empty one that fails validation
    out = DatasetDict({name: split.map(lambda r: {"images": [r["image"]]}, remove_columns=["image"])
                       for name, split in raw.items() if len(split)})
    for name, split in out.items():
        validate_rl_rows(split, name)
    return LoadedData(out, {name: 0 for name in out}, "synthetic", "synthetic", "drawn in code",
                      split_names={name: name for name in out})


def load_data(args: Any, seed: int = 0, with_images: bool = True, log: Callable[[str], None] | None = print,
              ) -> LoadedData:
    """Load ``args.dataset`` (see :class:`pepo.config.ScriptArguments`) as validated RL rows.

    ``args.source_format`` picks the reader (``auto``: detected from the files); ``args.dataset_format`` the task
    adapter (a reader whose rows need one adapter, e.g. PuzzleVQA's ``multiple_choice``, upgrades ``generic``
    to it with a note). ``seed`` drives k-shot sampling. ``with_images=False`` builds every row's prompt without
    opening images (see :func:`pepo.data.rows.build_rows`). ``log`` gets the one-line format report and notes.

    Raises:
        DataError: naming the file, line/row, id and field of the first bad row (or what is missing).
    """
    say = log or (lambda _: None)
    dataset_format = check_dataset_format(getattr(args, "dataset_format", "generic") or "generic")
    if args.dataset == "synthetic":
        return _synthetic(args, seed, dataset_format)
    source = read_source(args.dataset, getattr(args, "source_format", "auto") or "auto", args.dataset_config,
                         args.image_root, getattr(args, "class_names", None), args.train_split)
    notes = list(source.notes)
    if source.adapter and dataset_format != source.adapter:
        if dataset_format != "generic":
            raise DataError(f"dataset {args.dataset}: {source.format} rows need --dataset_format {source.adapter}, "
                            f"not {dataset_format}.")
        notes.append(f"{source.format} rows use the {source.adapter} adapter (--dataset_format {source.adapter})")
        dataset_format = source.adapter
    test_split = None if str(args.test_split).lower() in ("", "none") else args.test_split
    wanted = [args.train_split] + ([test_split] if test_split else [])
    raw: dict[str, Any] = {}
    if source.single:
        data = source.splits["all"]
        asked = " and ".join(f"{s!r}" for s in dict.fromkeys(wanted))
        notes.append(f"{args.dataset} has no splits: its {len(data)} rows serve as split {asked}")
        raw = {s: data for s in wanted}
    else:
        for split in wanted:
            alias = _SPLIT_ALIASES.get(split)
            if split not in source.splits and alias in source.splits:
                notes.append(f"split {split!r} is called {alias!r} in {args.dataset}; using it")
                raw[split] = source.splits[alias]
                continue
            if split not in source.splits:
                raise DataError(f"dataset {args.dataset}: split {split!r} not found; available: {list(source.splits)} "
                                f"(set --train_split / --test_split, or --split for pepo eval).")
            raw[split] = source.splits[split]
    say(f"data: {args.dataset} read as {source.describe()}")
    for note in notes:
        say(f"note: {note}")
    adapt = make_adapter(
        dataset_format, args, raw[args.train_split], seed, columns=source.columns if source.canonical else None,
        image_root=None if source.canonical else (args.image_root or source.image_root),
        box_format="xyxy" if source.canonical else None, with_images=with_images,
    )
    out, skipped = DatasetDict(), {}
    for role, split in zip(("train", "test"), wanted):
        data = raw[split]
        if role == "test" and args.num_test and len(data) > args.num_test:
            data = data.select(range(args.num_test))
        out[role], skipped[role] = adapt(data, split, role)
    return LoadedData(out, skipped, args.dataset, source.format, source.detail, dataset_format,
                      dict(zip(("train", "test"), wanted)), notes)


def load_rl_data(args: Any, seed: int = 0) -> tuple[DatasetDict, dict[str, int]]:
    """:func:`load_data` as ``(splits, skipped)``: a DatasetDict with ``train`` and, if configured, ``test``; and
    the number of invalid rows skipped per split (``--skip_invalid_rows``)."""
    loaded = load_data(args, seed)
    return loaded.splits, loaded.skipped
