"""RefCOCO / RefCOCO+ / RefCOCOg in the official ``refer`` layout: ``refs(<by>).p`` + ``instances.json``.

``refs(unc).p`` is a pickle of plain Python objects (a list of refs: ``ref_id``, ``ann_id``, ``image_id``,
``split``, ``sentences`` [{``sent``, ``raw``, ``sent_id``, ...}], ``category_id``); ``instances.json`` is COCO
(``images`` with ``file_name``/``width``/``height``, ``annotations`` with ``bbox`` = ``[x, y, w, h]`` pixels,
``categories``). One uniform row per sentence: ``id`` = ``sent_id``, ``question`` = the expression, ``answer`` =
the box as ``[x1, y1, x2, y2]`` pixels of the original image, ``image_size`` = ``[width, height]``; splits are
the refs' ``split`` values (train / val / testA / testB / test).
"""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

from pepo.data.errors import DataError
from pepo.data.readers.base import Source, image_path, rows_to_dataset
from pepo.data.rows import WHERE

__all__ = ["read_refcoco", "refs_file", "xywh_to_xyxy"]


def xywh_to_xyxy(box: list[float]) -> list[float]:
    """COCO ``[x, y, w, h]`` (top-left corner, width, height; pixels) -> ``[x1, y1, x2, y2]``."""
    x, y, w, h = (float(v) for v in box)
    return [x, y, x + w, y + h]


class _PlainUnpickler(pickle.Unpickler):
    """Loads only plain containers and scalars: a data file must never run code when it is read."""

    def find_class(self, module: str, name: str):  # noqa: D401
        raise pickle.UnpicklingError(f"refuses to load {module}.{name}: the file holds more than plain data")


def refs_file(folder: Path) -> Path | None:
    """``refs(unc).p`` if present, else the only ``refs(*).p`` of ``folder`` (None if there is none)."""
    found = sorted(folder.glob("refs(*).p"))
    if not found:
        return None
    preferred = [f for f in found if f.name == "refs(unc).p"]
    if preferred:
        return preferred[0]
    if len(found) > 1:
        raise DataError(f"{folder}: several refs files {[f.name for f in found]}; point --dataset at one of them.")
    return found[0]


def read_refcoco(path: Path, image_root: str | None) -> Source:
    """The official ``refs(<by>).p`` + ``instances.json`` pair (``path``: their folder, or the ``.p`` file);
    images (COCO train2014 ``file_name``) resolve against ``image_root`` (default: the folder)."""
    refs_path = path if path.is_file() else refs_file(path)
    folder = refs_path.parent if refs_path else path
    if refs_path is None:
        raise DataError(f"{path}: no refs(<by>).p file (the official RefCOCO annotations) in this folder.")
    instances_path = folder / "instances.json"
    if not instances_path.is_file():
        raise DataError(f"{folder}: instances.json (the COCO boxes for {refs_path.name}) is missing.")
    try:
        refs = _PlainUnpickler(io.BytesIO(refs_path.read_bytes()), encoding="latin1").load()
    except Exception as err:  # a truncated or foreign pickle raises many types
        raise DataError(f"{refs_path}: could not be read as the refer toolkit's refs pickle ({err}).") from None
    if not isinstance(refs, list):
        raise DataError(f"{refs_path}: expected a list of refs, got {type(refs).__name__}.")
    coco = json.loads(instances_path.read_text(encoding="utf-8"))
    if not isinstance(coco, dict):
        raise DataError(f"{instances_path}: expected a COCO object with images / annotations, got {type(coco).__name__}.")
    for key in ("images", "annotations"):
        if not isinstance(coco.get(key), list):
            raise DataError(f"{instances_path}, field {key!r}: expected a list.")
    images = {im["id"]: im for im in coco["images"]}
    boxes = {a["id"]: a for a in coco["annotations"]}
    categories = {c["id"]: c.get("name", "") for c in coco.get("categories", [])}
    base = Path(image_root) if image_root else folder
    by_split: dict[str, list[dict]] = {}
    for i, ref in enumerate(refs):
        where = f"{refs_path} ref {i}"
        if not isinstance(ref, dict):
            raise DataError(f"{where}: expected a dict, got {type(ref).__name__}.")
        for key in ("ann_id", "image_id", "split", "sentences"):
            if key not in ref:
                raise DataError(f"{where} (ref_id {ref.get('ref_id')}), field {key!r}: missing.")
        where = f"{where} (ref_id {ref.get('ref_id')})"
        ann = boxes.get(ref["ann_id"])
        if ann is None:
            raise DataError(f"{where}, field 'ann_id': annotation {ref['ann_id']} is not in {instances_path.name}.")
        image = images.get(ref["image_id"])
        if image is None:
            raise DataError(f"{where}, field 'image_id': image {ref['image_id']} is not in {instances_path.name}.")
        bbox = ann.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4:
            raise DataError(f"{instances_path} annotation {ref['ann_id']}, field 'bbox': expected [x, y, w, h], "
                            f"got {bbox!r}.")
        for sentence in ref["sentences"]:
            split = str(ref["split"])
            by_split.setdefault(split, []).append({
                "id": str(sentence.get("sent_id", f"{ref.get('ref_id')}_{len(by_split[split])}")),
                "image": image_path(base, image["file_name"], f"{where}, field 'file_name'"),
                "question": str(sentence.get("sent", sentence.get("raw", ""))),
                "answer": xywh_to_xyxy(bbox),
                "image_size": [int(image["width"]), int(image["height"])] if "width" in image else None,
                "ref_id": str(ref.get("ref_id", i)), "category": categories.get(ref.get("category_id"), ""),
                WHERE: f"{where},",
            })
    splits = {name: rows_to_dataset(rows) for name, rows in sorted(by_split.items())}
    return Source("refcoco", str(path), splits, adapter="grounding", detail=f"{refs_path.name} + instances.json")
