"""IoU reward for visual grounding: one predicted box against one ground-truth box.

**Box convention.** ``[x1, y1, x2, y2]`` in absolute pixels of the image *the model saw*, (x1, y1) the
top-left and (x2, y2) the bottom-right corner, origin at the top-left. This is Qwen2.5-VL's grounding
format (it emits ``{"bbox_2d": [x1, y1, x2, y2], "label": ...}`` in resized-input pixels). Other
conventions are *not* converted here: Qwen2-VL uses ``(x1,y1),(x2,y2)`` normalised to 0-1000, many
datasets use normalised 0-1 floats or COCO ``[x, y, w, h]``. Convert the ``answer`` column (and the
prompt) to this convention when building the dataset, including rescaling when the processor resizes
the image (ground truth must be in the resized image's pixels).

**Parsing.** Ground truth: the ``answer`` column (falls back to ``solution``), a list/tuple of 4 numbers
or a string holding one (``"[10, 20, 30, 40]"``, JSON). Prediction: the first closed ``<answer>`` span, else the
text outside the thinking (the answer contract's one exception); the first ``[...]`` holding at least 4 numbers, of which the first 4 are used (so
``{"bbox_2d": [..], "label": "dog"}`` and ``[[..]]`` work, only the first box counts); failing that, a
JSON-ish ``{"x1": .., "y1": .., "x2": .., "y2": ..}``.

**Robustness (every case scores 0.0, never raises).** No box / fewer than 4 numbers; NaN or infinity;
inverted boxes (``x2 < x1`` or ``y2 < y1``): *not* swapped, since a model that emits corners in the wrong
order should learn the convention rather than be silently repaired; zero union area (both boxes
degenerate). A zero-width/height box is legal but has IoU 0 with anything of positive area.

**Image size.** With ``image_size`` (a ``(w, h)`` pair, ``{"width":..,"height":..}``, or a per-row
column of those) both boxes are clipped to ``[0, w] x [0, h]`` first, so a box spilling outside the image
is scored on its visible part.

**Anti-hacking rule.** When the image size is known, a predicted box covering >= 90% of the image scores
0.0 unless the ground truth itself covers >= 90%. IoU alone already punishes a whole-image box for small
targets, but for large targets (say 60% of the image) the whole-image box earns IoU 0.6 for free and
becomes a safe default the policy collapses to; the explicit rule removes that floor.

``threshold`` (e.g. 0.5) turns the continuous IoU into a hit indicator: 1.0 if IoU >= threshold else 0.0
(:func:`iou50_reward`, registered as ``"iou50"``).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Sequence

from pepo.rewards.exact_match import completion_text, extract_answer

__all__ = ["iou_reward", "iou50_reward", "parse_box", "box_iou", "WHOLE_IMAGE_FRACTION"]

WHOLE_IMAGE_FRACTION = 0.9
_MAX_TEXT = 10_000  # only the head of a runaway completion is searched for a box

_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf(?:inity)?)\b"
_NUMBER_RE = re.compile(_NUMBER, re.IGNORECASE)
_BRACKETS = re.compile(r"\[([^\[\]]*)\]")
_KEYED = {k: re.compile(rf"[\"']?{k}[\"']?\s*[:=]\s*({_NUMBER})", re.IGNORECASE) for k in ("x1", "y1", "x2", "y2")}

Box = tuple[float, float, float, float]


def _finite_box(values: Sequence[Any]) -> Box | None:
    try:
        box = tuple(float(v) for v in values)
    except (TypeError, ValueError, OverflowError):
        return None
    if len(box) != 4 or not all(math.isfinite(v) for v in box):
        return None
    return box  # type: ignore[return-value]


def parse_box(value: Any) -> Box | None:
    """A finite ``(x1, y1, x2, y2)`` from a list/tuple of 4 numbers or from text (see module doc), else None.

    Order is not checked here (see :func:`box_iou`).
    """
    if isinstance(value, (list, tuple)):
        if len(value) == 1 and isinstance(value[0], (list, tuple)):  # [[x1, y1, x2, y2]]
            value = value[0]
        return _finite_box(value) if len(value) == 4 else None
    if isinstance(value, dict):
        if "bbox_2d" in value:
            return parse_box(value["bbox_2d"])
        return _finite_box([value.get(k) for k in ("x1", "y1", "x2", "y2")])
    if not isinstance(value, str):
        return None
    text = value[:_MAX_TEXT]
    for match in _BRACKETS.finditer(text):
        numbers = _NUMBER_RE.findall(match.group(1))
        if len(numbers) >= 4:
            return _finite_box(numbers[:4])
    keyed = [_KEYED[k].search(text) for k in ("x1", "y1", "x2", "y2")]
    if all(keyed):
        return _finite_box([m.group(1) for m in keyed])  # type: ignore[union-attr]
    return None


def _area(box: Box) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def _clip(box: Box, size: tuple[float, float]) -> Box:
    w, h = size
    return (min(max(box[0], 0.0), w), min(max(box[1], 0.0), h), min(max(box[2], 0.0), w), min(max(box[3], 0.0), h))


def box_iou(pred: Box | None, gold: Box | None, image_size: tuple[float, float] | None = None) -> float:
    """IoU in [0, 1] with the module's rules: inverted/missing -> 0, clipping and whole-image rule with a size."""
    if pred is None or gold is None:
        return 0.0
    if any(b[2] < b[0] or b[3] < b[1] for b in (pred, gold)):
        return 0.0
    if image_size is not None:
        pred, gold = _clip(pred, image_size), _clip(gold, image_size)
        image_area = image_size[0] * image_size[1]
        if _area(pred) >= WHOLE_IMAGE_FRACTION * image_area and _area(gold) < WHOLE_IMAGE_FRACTION * image_area:
            return 0.0
    ix = min(pred[2], gold[2]) - max(pred[0], gold[0])
    iy = min(pred[3], gold[3]) - max(pred[1], gold[1])
    inter = max(0.0, ix) * max(0.0, iy)
    union = _area(pred) + _area(gold) - inter
    if not union > 0.0:
        return 0.0
    return min(1.0, max(0.0, inter / union))


def _parse_size(value: Any) -> tuple[float, float] | None:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    if isinstance(value, dict):
        value = (value.get("width"), value.get("height"))
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        return None
    try:
        w, h = float(value[0]), float(value[1])
    except (TypeError, ValueError):
        return None
    return (w, h) if math.isfinite(w) and math.isfinite(h) and w > 0 and h > 0 else None


def _per_row(value: Any, n: int, is_single) -> list[Any]:
    """Broadcast a kwarg that may be one value for all rows or a column (one value per row)."""
    if value is None or is_single(value):
        return [value] * n
    if isinstance(value, (list, tuple)) and len(value) == n:
        return list(value)
    return [None] * n


def _is_single_size(value: Any) -> bool:
    return isinstance(value, dict) or (
        isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value)
    )


def iou_reward(
    completions: list[Any],
    solution: list[Any] | None = None,
    answer: list[Any] | None = None,
    image_size: Any = None,
    threshold: float | None = None,
    **_: Any,
) -> list[float]:
    """IoU of the predicted box with the ground-truth box, per completion (see module doc for all rules).

    Ground truth from ``answer`` (else ``solution``); ``image_size`` one ``(w, h)`` or a column; with
    ``threshold`` the reward is 1.0 if IoU >= threshold else 0.0.
    """
    n = len(completions)
    golds = answer if answer is not None else solution
    golds = list(golds) if golds is not None else [None] * n
    sizes = _per_row(image_size, n, _is_single_size)
    thresholds = _per_row(threshold, n, lambda v: isinstance(v, (int, float)))
    rewards = []
    for completion, gold, size, thr in zip(completions, golds, sizes, thresholds):
        pred_box = parse_box(extract_answer(completion_text(completion)[:_MAX_TEXT], untagged="visible"))
        iou = box_iou(pred_box, parse_box(gold), _parse_size(size))
        rewards.append(float(iou >= thr) if thr is not None else float(iou))
    return rewards


def iou50_reward(completions: list[Any], **kwargs: Any) -> list[float]:
    """:func:`iou_reward` thresholded at 0.5 (1.0 for a hit with IoU >= 0.5, else 0.0)."""
    kwargs.pop("threshold", None)
    return iou_reward(completions, threshold=0.5, **kwargs)
