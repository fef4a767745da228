"""Format readers: published benchmark files -> uniform rows (see :mod:`pepo.data.rows`).

One reader per published format; :func:`detect_format` picks one from the files where that is unambiguous and
``--source_format`` forces one. Readers never import the task adapters: readers -> rows -> adapters -> prompts.

=====================  ========================================================================================
``table``              rows with image / question / answer columns: JSON Lines, a JSON list (or an object keyed
                       by id), Parquet, CSV, Arrow, a folder of such files (split per file), or a hub id; the
                       Hugging Face copies (``hiyouga/geometry3k``, ``AI4Math/MathVista``, ``AI4Math/MathVerse``,
                       ``lscpku/LogicVista``) are tables whose ids come from ``pid`` / ``sample_index`` / ``id``
``geometry3k_release`` the paper release's JSONL (``images`` / ``messages`` / ``solution``)
``intergps``           InterGPS' Geometry3K folders ``<split>/<id>/data.json`` + ``img_diagram.png``
``logicvista``         LogicVista's ``dataset.json`` (object keyed by id, ``imagename`` under ``images/``)
``puzzlevqa``          PuzzleVQA / AlgoPuzzleVQA per-category JSON Lines files (a folder of them = one dataset)
``mathvista``          MathVista's ``testmini.json`` keyed by ``pid`` (+ ``query.json`` prompts when present)
``mathverse``          MathVerse's ``testmini.json`` / ``testmini_text_only.json`` (a list with ``sample_index``)
``refcoco``            ``refs(unc).p`` + ``instances.json`` (the ``refer`` toolkit layout)
``fgvc_aircraft``      ``images_variant_<split>.txt`` + ``images/`` (+ ``variants.txt``)
``flowers102``         ``imagelabels.mat`` + ``setid.mat`` + ``jpg/`` (class names from ``--class_names``)
``image_folder``       ``root/[<split>/]<class>/*.jpg``
=====================  ========================================================================================
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from datasets import Dataset, DatasetDict

from pepo.data.errors import DataError
from pepo.data.readers.base import CANONICAL, Source, read_json, read_json_lines, rows_to_dataset
from pepo.data.readers.benchmarks import (
    PUZZLE_KEYS,
    puzzle_files,
    read_geometry3k_release,
    read_intergps,
    read_logicvista,
    read_mathverse,
    read_mathvista,
    read_puzzlevqa,
    release_files,
)
from pepo.data.readers.classification import (
    DATA_SUFFIXES,
    fgvc_folder,
    image_folder_splits,
    read_fgvc_aircraft,
    read_flowers102,
    read_image_folder,
)
from pepo.data.readers.grounding import read_refcoco, refs_file
from pepo.data.rows import WHERE

__all__ = ["SOURCE_FORMATS", "Source", "CANONICAL", "detect_format", "read_source", "check_source_format"]

SOURCE_FORMATS = ("auto", "table", "geometry3k_release", "intergps", "logicvista", "puzzlevqa", "mathvista",
                  "mathverse", "refcoco", "fgvc_aircraft", "flowers102", "image_folder")

_RELEASE_KEYS = {"images", "messages", "solution"}


def check_source_format(value: str) -> str:
    if value not in SOURCE_FORMATS:
        raise ValueError(f"source_format: unknown value {value!r}; choose one of {list(SOURCE_FORMATS)}.")
    return value


# --------------------------------------------------------------------------------------------- detection


def _first_object(path: Path) -> dict | None:
    """The first row of a JSON Lines file (None if the first line is not a JSON object)."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError:
                    return None
                return obj if isinstance(obj, dict) else None
    return None


def _format_of_row(row: dict) -> str | None:
    if _RELEASE_KEYS <= set(row):
        return "geometry3k_release"
    if PUZZLE_KEYS <= set(row):
        return "puzzlevqa"
    if {"sample_index", "question_type", "question", "answer"} <= set(row):
        return "mathverse"
    return None


def _format_of_json(path: Path) -> str:
    data = read_json(path)
    if isinstance(data, tuple):  # JSON Lines under a .json name
        return _format_of_row(data[1][0][1]) or "table"
    if isinstance(data, list):
        return (_format_of_row(data[0]) if data and isinstance(data[0], dict) else None) or "table"
    if isinstance(data, dict) and _format_of_row(data):  # a one-row JSON Lines file
        return _format_of_row(data)
    if isinstance(data, dict) and data and all(isinstance(v, dict) for v in data.values()):
        first = next(iter(data.values()))
        if "imagename" in first:
            return "logicvista"
        if {"pid", "question_type", "answer"} <= set(first):
            return "mathvista"
        return "table"
    return "table"


def detect_format(dataset: str) -> tuple[str, str]:
    """``(format, why)`` for a path or hub id: the reader its files need (see the module table)."""
    path = Path(dataset)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".p":
            return "refcoco", "a refs pickle"
        if suffix == ".jsonl":
            row = _first_object(path)
            return (_format_of_row(row) or "table") if row else "table", "JSON Lines"
        if suffix == ".json":
            return _format_of_json(path), "JSON"
        return "table", f"a {suffix or 'data'} file"
    if path.is_dir():
        if refs_file(path) is not None:
            return "refcoco", "refs(*).p + instances.json"
        if fgvc_folder(path) is not None:
            return "fgvc_aircraft", "images_variant_*.txt"
        if (path / "imagelabels.mat").is_file():
            return "flowers102", "imagelabels.mat"
        if any(path.glob("*/data.json")) or any(path.glob("*/*/data.json")):
            return "intergps", "<id>/data.json folders"
        if (path / "dataset.json").is_file() and _format_of_json(path / "dataset.json") == "logicvista":
            return "logicvista", "dataset.json keyed by id"
        releases = release_files(path)
        if releases and (_format_of_row(_first_object(releases[0]) or {}) == "geometry3k_release"):
            return "geometry3k_release", f"a folder of {len(releases)} split files"
        files = puzzle_files(path)
        if files and all(f.suffix == ".json" for f in files):
            row = _first_object(files[0])
            if row and _format_of_row(row) == "puzzlevqa":
                return "puzzlevqa", f"a folder of {len(files)} per-category files"
        if image_folder_splits(path) is not None:
            return "image_folder", "class folders of images"
        return "table", "a folder of data files"
    if dataset.startswith((".", "/", "~")) or Path(dataset).suffix.lower() in DATA_SUFFIXES:
        raise DataError(f"dataset {dataset}: no such file or folder.")
    return "table", "a hub dataset id"


# --------------------------------------------------------------------------------------------- tables


def _hub_error(dataset: str, err: Exception) -> DataError:
    return DataError(
        f"dataset {dataset!r} could not be loaded from the Hugging Face Hub ({type(err).__name__}: {err}). Without "
        f"network access, download it elsewhere (`huggingface-cli download --repo-type dataset {dataset} --local-dir "
        f"DIR`) and pass --dataset DIR, or point --dataset at a local copy in a format pepo reads (see the README, "
        f"'Formats we read')."
    )


def _table_flavour(data: Dataset) -> tuple[str, str | None]:
    """``(description, id column)`` of a table with a published benchmark's Hugging Face columns."""
    cols = set(data.column_names)
    if {"pid", "question_type", "answer_type"} <= cols:
        return "MathVista columns; id = pid", "pid"
    if {"sample_index", "problem_version"} <= cols:
        return "MathVerse columns; id = sample_index", "sample_index"
    if {"images", "problem", "answer"} <= cols:
        return "hiyouga/geometry3k columns", None
    if {"imagename", "question", "answer"} <= cols or {"skill", "broad_capability"} <= cols:
        return "LogicVista columns", None
    return "", None


def _with_ids(data: Dataset, where: str | None) -> Dataset:
    _, id_column = _table_flavour(data)
    if "id" not in data.column_names and id_column is not None:
        data = data.add_column("id", [str(v) for v in data[id_column]])
    if where is not None and WHERE not in data.column_names:
        data = data.add_column(WHERE, [where] * len(data))
    return data


def _json_table(path: Path) -> Dataset:
    data = read_json(path) if path.suffix.lower() == ".json" else ("jsonl", read_json_lines(path))
    if isinstance(data, tuple):
        rows = [{**obj, WHERE: f"{path} line {n},"} for n, obj in data[1]]
    elif isinstance(data, list):
        rows = []
        for i, obj in enumerate(data):
            if not isinstance(obj, dict):
                raise DataError(f"{path} item {i}: expected an object (one row), got {type(obj).__name__}.")
            rows.append({**obj, WHERE: f"{path} item {i},"})
    elif isinstance(data, dict) and data and all(isinstance(v, dict) for v in data.values()):
        rows = [{"id": str(k), **v, WHERE: f"{path} id {k},"} for k, v in data.items()]
    else:
        keys = list(data)[:5] if isinstance(data, dict) else []
        raise DataError(f"{path}: expected a list of rows (or one object per line, or an object keyed by item id), "
                        f"got {type(data).__name__}" + (f" with keys {keys}" if keys else "") + ".")
    if not rows:
        raise DataError(f"{path}: the file holds no rows.")
    return rows_to_dataset(rows)


def read_table(dataset: str, config: str | None, image_root: str | None) -> Source:
    """Rows of image / question / answer columns (named by the column options)."""
    from datasets import load_dataset

    path = Path(dataset)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in (".jsonl", ".json"):
            data = _json_table(path)
        else:
            builder = {".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}.get(suffix)
            if builder is None:
                raise DataError(f"dataset {dataset}: unsupported file type {suffix!r} (use .jsonl, .json, .parquet, "
                                ".csv, or a folder in a published layout).")
            try:
                data = load_dataset(builder, data_files={"train": str(path)})["train"]
            except Exception as err:  # a damaged file: name it instead of a builder traceback
                raise DataError(f"{path}: could not be read as {builder} ({type(err).__name__}: {err}).") from None
            data = _with_ids(data, f"{path}")
        flavour, _ = _table_flavour(data)
        return Source("table", dataset, {"all": _with_ids(data, None)}, single=True, canonical=False,
                      detail=flavour, image_root=image_root or str(path.parent))
    try:
        raw: DatasetDict = load_dataset(str(path) if path.is_dir() else dataset, config)
    except DataError:
        raise
    except Exception as err:  # offline hub, missing dataset, damaged folder
        if path.is_dir():
            raise DataError(f"{path}: could not be read as a folder of data files ({type(err).__name__}: {err}).") \
                from None
        raise _hub_error(dataset, err) from None
    splits = {name: _with_ids(split, None) for name, split in raw.items()}
    flavour = _table_flavour(next(iter(splits.values())))[0] if splits else ""
    data_files = [f for f in path.rglob("*") if f.is_file() and f.suffix.lower() in DATA_SUFFIXES] \
        if path.is_dir() else []
    single = path.is_dir() and len(data_files) == 1 and list(splits) == ["train"] \
        and data_files[0].stem not in ("train",)
    if single:
        splits = {"all": splits["train"]}
    return Source("table", dataset, splits, single=single, canonical=False, detail=flavour,
                  image_root=image_root or (str(path) if path.is_dir() else None))


# --------------------------------------------------------------------------------------------- dispatch


def read_source(dataset: str, source_format: str = "auto", config: str | None = None, image_root: str | None = None,
                class_names: str | None = None, train_split: str = "train") -> Source:
    """Read ``dataset`` (a path or hub id) with the reader ``source_format`` names (``auto``: detected).

    Raises:
        DataError: the files are not in that format, or a file / line / field is wrong (named in the message).
    """
    check_source_format(source_format)
    if source_format == "auto":
        source_format, why = detect_format(dataset)
    else:
        why = "--source_format"
    path = Path(dataset)
    if source_format != "table" and not path.exists():
        raise DataError(f"dataset {dataset}: no such file or folder (source_format {source_format}).")
    readers: dict[str, Callable[[], Source]] = {
        "table": lambda: read_table(dataset, config, image_root),
        "geometry3k_release": lambda: read_geometry3k_release(path, image_root),
        "intergps": lambda: read_intergps(path, image_root),
        "logicvista": lambda: read_logicvista(path / "dataset.json" if path.is_dir() else path, image_root),
        "puzzlevqa": lambda: read_puzzlevqa(path, image_root),
        "mathvista": lambda: read_mathvista(path, image_root),
        "mathverse": lambda: read_mathverse(path, image_root),
        "refcoco": lambda: read_refcoco(path, image_root),
        "fgvc_aircraft": lambda: read_fgvc_aircraft(path, image_root, class_names),
        "flowers102": lambda: read_flowers102(path, image_root, class_names),
        "image_folder": lambda: read_image_folder(path, train_split),
    }
    try:
        source = readers[source_format]()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"dataset {dataset}: could not be read as {source_format} ({type(err).__name__}: {err}).") \
            from None
    except (KeyError, TypeError, AttributeError) as err:
        # a file of another layout than the one forced: name the format instead of a traceback
        raise DataError(f"dataset {dataset}: not in the {source_format} layout ({type(err).__name__}: {err}).") \
            from None
    source.detail = source.detail or why
    return source
