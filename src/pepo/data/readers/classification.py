"""Few-shot classification datasets in their official layouts, and plain image folders.

* FGVC-Aircraft (``fgvc-aircraft-2013b/data``): ``images_variant_{train,val,test,trainval}.txt`` (lines
  ``<image id> <variant name>``), ``images/<image id>.jpg``, class names from ``variants.txt`` (their order).
* Flowers102: ``imagelabels.mat`` (``labels``: 1..102 per image, 1-based), ``setid.mat`` (``trnid`` / ``valid`` /
  ``tstid``: 1-based image numbers -> train / val / test), ``jpg/image_%05d.jpg``. The official files carry no
  class names: they come from a list you give (``--class_names``) or one found in the folder.
* An image folder ``root/<class>/*.jpg`` (the train split) or ``root/<split>/<class>/...``.

Rows: ``image`` (path), ``answer`` (a ``ClassLabel`` over the class names), ``id``.
"""

from __future__ import annotations

import json
from pathlib import Path

from datasets import ClassLabel, Dataset, Features, Value

from pepo.data.errors import DataError
from pepo.data.readers.base import Source
from pepo.data.rows import WHERE

__all__ = ["read_fgvc_aircraft", "read_flowers102", "read_image_folder", "read_class_names", "fgvc_folder",
           "image_folder_dataset", "image_folder_splits", "IMAGE_SUFFIXES", "DATA_SUFFIXES"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
DATA_SUFFIXES = (".parquet", ".jsonl", ".json", ".csv", ".arrow")
FLOWERS_CLASS_FILES = ("classnames.txt", "class_names.txt", "cat_to_name.json", "classnames.json")


def _labelled(images: list[str], labels: list[int], ids: list[str], classes: list[str], where: list[str]) -> Dataset:
    features = Features({"image": Value("string"), "answer": ClassLabel(names=classes), "id": Value("string"),
                         WHERE: Value("string")})
    return Dataset.from_dict({"image": images, "answer": labels, "id": ids, WHERE: where}, features=features)


def read_class_names(path: Path) -> list[str]:
    """Class names, label 0 first: a ``.txt`` (one per line), a JSON list, ``{"classes": [...]}`` (CLIP's
    prompt lists), or ``{"1": name, ...}`` (1-based label -> name)."""
    if not path.is_file():
        raise DataError(f"class names file {path} does not exist.")
    if path.suffix != ".json":
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and isinstance(data.get("classes"), list):
            data = data["classes"]
        if isinstance(data, dict):
            try:
                data = [data[k] for k in sorted(data, key=int)]
            except ValueError:
                raise DataError(f"{path}: keys must be label numbers (1-based), got {sorted(data)[:3]}...") from None
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a list of class names, got {type(data).__name__}.")
        names = [str(n).strip() for n in data]
    if not names or len(set(names)) != len(names):
        raise DataError(f"{path}: expected distinct, non-empty class names ({len(names)} read).")
    return names


# ----------------------------------------------------------------------------------------------- FGVC-Aircraft


def fgvc_folder(path: Path) -> Path | None:
    """The folder holding ``images_variant_*.txt`` (``path`` itself or its ``data/``), else None."""
    for folder in (path, path / "data", path / "fgvc-aircraft-2013b" / "data"):
        if folder.is_dir() and any(folder.glob("images_variant_*.txt")):
            return folder
    return None


def read_fgvc_aircraft(path: Path, image_root: str | None, class_names: str | None = None) -> Source:
    """FGVC-Aircraft at the ``variant`` level (100 classes): one split per ``images_variant_<split>.txt``."""
    folder = fgvc_folder(path)
    if folder is None:
        raise DataError(f"{path}: no images_variant_<split>.txt (FGVC-Aircraft's data/ folder) here.")
    split_files = {f.stem[len("images_variant_"):]: f for f in sorted(folder.glob("images_variant_*.txt"))}
    labelled: dict[str, list[tuple[str, str, int]]] = {}
    for split, f in split_files.items():
        rows = []
        for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            image_id, _, name = line.strip().partition(" ")
            if not name.strip():
                raise DataError(f"{f} line {n}: expected '<image id> <variant name>', got {line!r}.")
            rows.append((image_id, name.strip(), n))
        labelled[split] = rows
    names_file = Path(class_names) if class_names else folder / "variants.txt"
    if names_file.is_file():
        classes = read_class_names(names_file)
    else:
        classes = sorted({name for rows in labelled.values() for _, name, _ in rows})
    base = Path(image_root) if image_root else folder / "images"
    splits = {}
    for split, rows in labelled.items():
        f = split_files[split]
        for image_id, name, n in rows:
            if name not in classes:
                raise DataError(f"{f} line {n} (id {image_id}): variant {name!r} is not in {names_file.name}.")
        splits[split] = _labelled([str(base / f"{i}.jpg") for i, _, _ in rows],
                                  [classes.index(name) for _, name, _ in rows], [i for i, _, _ in rows], classes,
                                  [f"{f} line {n}," for _, _, n in rows])
    source = Source("fgvc_aircraft", str(path), splits, adapter="classification",
                    detail=f"images_variant_*.txt, {len(classes)} variants")
    if not names_file.is_file():
        source.notes.append(f"no {names_file.name}: the {len(classes)} class names are the variants the split files name")
    return source


# ----------------------------------------------------------------------------------------------- Flowers102


def _loadmat(path: Path) -> dict:
    try:
        from scipy.io import loadmat
    except ImportError:
        raise DataError(f"{path}: reading Flowers102's .mat files needs scipy: pip install scipy") from None
    try:
        return loadmat(str(path))
    except Exception as err:  # scipy raises several types for a damaged file
        raise DataError(f"{path}: could not be read as a MATLAB file ({err}).") from None


def read_flowers102(path: Path, image_root: str | None, class_names: str | None = None) -> Source:
    """Flowers102: labels from ``imagelabels.mat`` (1-based -> 0-based), splits from ``setid.mat``."""
    labels_path, setid_path = path / "imagelabels.mat", path / "setid.mat"
    for f in (labels_path, setid_path):
        if not f.is_file():
            raise DataError(f"{path}: {f.name} is missing (Flowers102 needs imagelabels.mat and setid.mat).")
    labels_mat, setid = _loadmat(labels_path), _loadmat(setid_path)
    if "labels" not in labels_mat:
        raise DataError(f"{labels_path}, field 'labels': missing.")
    labels = [int(v) for v in labels_mat["labels"].ravel()]
    names_file = Path(class_names) if class_names else next(
        (path / n for n in FLOWERS_CLASS_FILES if (path / n).is_file()), None)
    if names_file is None:
        raise DataError(f"{path}: Flowers102's files hold label numbers only; give the class names with "
                        f"--class_names FILE (one name per line, label 1 first; e.g. CLIP's list) or put "
                        f"{FLOWERS_CLASS_FILES[0]} in the folder.")
    classes = read_class_names(names_file)
    for i, label in enumerate(labels):
        if not 1 <= label <= len(classes):
            raise DataError(f"{labels_path}, field 'labels', image {i + 1}: label {label} is outside 1..{len(classes)} "
                            f"({len(classes)} names in {names_file.name}).")
    base = Path(image_root) if image_root else path / "jpg"
    splits = {}
    for key, split in (("trnid", "train"), ("valid", "val"), ("tstid", "test")):
        if key not in setid:
            raise DataError(f"{setid_path}, field {key!r}: missing.")
        numbers = [int(v) for v in setid[key].ravel()]
        for n in numbers:
            if not 1 <= n <= len(labels):
                raise DataError(f"{setid_path}, field {key!r}: image number {n} is outside 1..{len(labels)}.")
        splits[split] = _labelled([str(base / f"image_{n:05d}.jpg") for n in numbers],
                                  [labels[n - 1] - 1 for n in numbers], [f"{n:05d}" for n in numbers], classes,
                                  [f"{setid_path.name} {key} image {n}," for n in numbers])
    return Source("flowers102", str(path), splits, adapter="classification",
                  detail=f"imagelabels.mat + setid.mat, names from {names_file.name}")


# ----------------------------------------------------------------------------------------------- image folders


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def _is_class_root(path: Path) -> bool:
    """A folder whose subfolders hold images directly (``path/<class>/*.jpg``)."""
    return any(d.is_dir() and any(_is_image(f) for f in d.iterdir()) for d in path.iterdir() if d.is_dir())


def image_folder_dataset(root: Path) -> Dataset:
    """``root/<class>/*.jpg|jpeg|png`` as uniform rows (image path, ``ClassLabel`` answer over every class
    folder, ``id`` = ``<class>/<file>``), files sorted by name so the row order does not depend on the file system."""
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    images, labels, ids = [], [], []
    for index, name in enumerate(classes):
        for f in sorted((root / name).iterdir(), key=lambda p: p.name):
            if _is_image(f):
                images.append(str(f.resolve()))
                labels.append(index)
                ids.append(f"{name}/{f.name}")
    return _labelled(images, labels, ids, classes, [f"{root / i}," for i in ids])


def image_folder_splits(root: Path, train_split: str = "train") -> dict[str, Dataset] | None:
    """``root/<split>/<class>/`` (every split folder a split) or ``root/<class>/`` (= ``train_split``); None if
    ``root`` is not such a folder or holds data files (then it is a table folder)."""
    if not root.is_dir() or any(f.suffix.lower() in DATA_SUFFIXES for f in root.rglob("*") if f.is_file()):
        return None
    subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    split_dirs = [d for d in subdirs if _is_class_root(d)]
    if split_dirs:
        return {d.name: image_folder_dataset(d) for d in split_dirs}
    if _is_class_root(root):
        return {train_split: image_folder_dataset(root)}
    return None


def read_image_folder(path: Path, train_split: str = "train") -> Source:
    splits = image_folder_splits(path, train_split)
    if splits is None:
        raise DataError(f"{path}: not an image folder (root/<class>/*.jpg or root/<split>/<class>/*.jpg).")
    return Source("image_folder", str(path), splits, adapter="classification", detail="<split>/<class>/*.jpg")
