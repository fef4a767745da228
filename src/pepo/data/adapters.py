"""Dataset adapters for the paper's non-math tasks: grounding, few-shot classification, multiple choice.

``--dataset_format`` picks one (``generic``, the default, is :func:`pepo.data.loading.to_rl_rows`). Every
adapter produces the same RL rows as the generic path (``prompt``, ``images``, ``answer``, ``id``, extra
columns kept for the rewards) through the shared per-row machinery :func:`pepo.data.loading.build_rows`
(image loading and path safety, duplicate ids, ``--skip_invalid_rows`` counting), and adds its own checks.

**grounding** (RefCOCO-style; paper Task 2). A row holds one image, a referring expression
(``--question_column``) and the ground-truth box (``--answer_column``): ``[x1, y1, x2, y2]`` in pixels of the
ORIGINAL image, (x1, y1) the top-left corner, as a list or a JSON string. Checks: 4 finite numbers,
``x2 > x1``, ``y2 > y1``, inside the image with a 1-pixel tolerance (the box is then clipped to the image).
The prompt asks for the referred object's box as ``[x1, y1, x2, y2]`` inside ``<answer>``. The stored
``answer`` is a JSON list string and ``image_size`` a ``[w, h]`` column, both in the box convention the model
is asked to use (``iou``/``iou50`` rewards clip to ``image_size``). ``--box_convention``:

* ``absolute_resized`` (default; Qwen2.5-VL's native grounding format): absolute pixels of the RESIZED image
  the model actually sees. The resized size is Qwen's ``smart_resize`` rule (:func:`smart_resize`): each side
  rounded to a multiple of 28 (patch 14 x spatial merge 2), then the area scaled into
  ``[--min_pixels, --max_pixels]`` (Qwen2.5-VL's defaults 3136 = 4x28x28 and 12845056 = 16384x28x28). These two
  options must match the processor's ``min_pixels`` / ``max_pixels`` (the Qwen2.5-VL processor's defaults
  are the same numbers); if you lower ``max_pixels`` in the processor, lower it here too, or the ground truth is
  in the wrong frame.
* ``absolute_original``: absolute pixels of the original image (the box is stored unchanged); right for
  models that see the image at its original size, or evaluation protocols that score in original pixels.
* ``relative_1000``: Qwen2-VL style, coordinates normalised to 0-1000 of the width / height
  (``image_size`` is then ``[1000, 1000]``).

**classification** (few-shot FGVC-Aircraft / Flower102; paper Task 3). Either an image folder
``root/<class name>/*.jpg|jpeg|png`` (the train split; with ``root/<split>/<class name>/...`` every split
folder is a split), or a dataset with ``--image_column`` and a label in ``--answer_column`` (an int with
``ClassLabel`` names, or the class name as a string). Class names come from the train split (folder names,
``ClassLabel`` names, or the sorted distinct strings). ``--k_shot K`` samples K training images per class,
deterministically from the seed (same seed and same files -> same selection; classes are sampled
independently, so adding a class does not change another's picks); a class with fewer than K images is a
:class:`DataError` naming the class. Sampling looks at labels only: a sampled row whose image then fails
validation is reported (or skipped with ``--skip_invalid_rows``), not replaced. The prompt asks for the class
name inside ``<answer>``, listing all class names only with ``--classification_show_options true``; the answer
is the class name (reward ``choice`` compares normalised names).

**multiple_choice** (PuzzleVQA / AlgoPuzzleVQA; paper Task 4). Rows with an image, a question, options (a list
column named by ``--options_column``, or a JSON string of one) and an answer that is one option's text or its
letter. The prompt lists the options as ``(A) ...``; the answer is normalised to the letter and a ``choices``
column keeps the option texts (for ``choice_reward``). Checks: at least 2 (at most 26) non-empty, distinct
options; the answer must be one of them (by text, then by letter), else :class:`DataError`.
"""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path
from typing import Any, Callable

from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
from PIL import Image

from pepo.data.loading import DataError, _prompt, build_rows, required_question

__all__ = [
    "DATASET_FORMATS",
    "BOX_CONVENTIONS",
    "QWEN_MIN_PIXELS",
    "QWEN_MAX_PIXELS",
    "check_dataset_format",
    "check_box_convention",
    "smart_resize",
    "to_grounding_rows",
    "to_classification_rows",
    "to_multiple_choice_rows",
    "sample_k_shot",
    "class_names_of",
    "image_folder_dataset",
    "load_classification_raw",
    "make_adapter",
]

DATASET_FORMATS = ("generic", "grounding", "classification", "multiple_choice")
BOX_CONVENTIONS = ("absolute_resized", "absolute_original", "relative_1000")
QWEN_FACTOR = 28  # patch size 14 x spatial merge size 2
QWEN_MIN_PIXELS = 4 * 28 * 28  # 3136
QWEN_MAX_PIXELS = 16384 * 28 * 28  # 12845056
BOX_TOLERANCE = 1.0  # pixels a ground-truth box may spill outside the image (annotation rounding)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
DATA_SUFFIXES = (".parquet", ".jsonl", ".json", ".csv", ".arrow")


def check_dataset_format(value: str) -> str:
    if value not in DATASET_FORMATS:
        raise ValueError(f"dataset_format: unknown value {value!r}; choose one of {list(DATASET_FORMATS)}.")
    return value


def check_box_convention(value: str) -> str:
    if value not in BOX_CONVENTIONS:
        raise ValueError(f"box_convention: unknown value {value!r}; choose one of {list(BOX_CONVENTIONS)}.")
    return value


def smart_resize(
    height: int, width: int, factor: int = QWEN_FACTOR, min_pixels: int = QWEN_MIN_PIXELS,
    max_pixels: int = QWEN_MAX_PIXELS,
) -> tuple[int, int]:
    """``(height, width)`` the Qwen2-VL / Qwen2.5-VL image processor resizes an image to.

    Each side is rounded to the nearest multiple of ``factor``; if the area then exceeds ``max_pixels``
    (falls below ``min_pixels``) both sides are scaled down (up) by the same ratio and floored (ceiled) to a
    multiple of ``factor``.
    """
    if min(height, width) <= 0:
        raise ValueError(f"image size {width}x{height} is empty.")
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"image size {width}x{height}: aspect ratio above 200 is not supported by the processor.")
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


# --------------------------------------------------------------------------------------------- grounding


def _polygon_points(value: Any) -> list[tuple[float, float]] | None:
    """Points of a LISA-style polygon ([[x, y], ...], >= 3 points) or list of polygons; None if not one."""
    if not isinstance(value, (list, tuple)) or not value:
        return None
    pairs = lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and all(  # noqa: E731
        isinstance(c, (int, float)) and not isinstance(c, bool) for c in v)
    if len(value) >= 3 and all(pairs(p) for p in value):
        return [(float(x), float(y)) for x, y in value]
    if all(isinstance(poly, (list, tuple)) and len(poly) >= 3 and all(pairs(p) for p in poly) for poly in value):
        return [(float(x), float(y)) for poly in value for x, y in poly]
    return None


def _ground_truth_box(value: Any, where: str) -> tuple[float, float, float, float]:
    """A box [x1, y1, x2, y2], or (LISA-grounding style) a polygon / list of polygons -> its bounding box."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise DataError(f"{where}: box {value!r} is not a JSON list [x1, y1, x2, y2].") from None
    points = _polygon_points(value)
    if points is not None:
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        value = [min(xs), min(ys), max(xs), max(ys)]
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        raise DataError(f"{where}: box must be 4 numbers [x1, y1, x2, y2], got {value!r}.")
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in value):
        raise DataError(f"{where}: box must be 4 numbers [x1, y1, x2, y2], got {value!r}.")
    box = tuple(float(v) for v in value)
    if not all(math.isfinite(v) for v in box):
        raise DataError(f"{where}: box {list(value)} has a non-finite coordinate.")
    if not (box[2] > box[0] and box[3] > box[1]):
        raise DataError(f"{where}: box {list(value)} is empty or inverted (need x2 > x1 and y2 > y1).")
    return box  # type: ignore[return-value]


def _box_prompt(expression: str, convention: str) -> str:
    frame = (
        "with coordinates normalised to 0-1000 (0 is the left/top edge of the image, 1000 the right/bottom edge)"
        if convention == "relative_1000"
        else "in absolute pixel coordinates of the image"
    )
    return (
        f'Locate the object described by this referring expression: "{expression.strip()}". Output its bounding '
        f"box as [x1, y1, x2, y2] {frame}, where (x1, y1) is the top-left and (x2, y2) the bottom-right corner, "
        "inside <answer> </answer>."
    )


def to_grounding_rows(
    dataset: Dataset,
    split: str,
    image_column: str = "image",
    question_column: str = "question",
    answer_column: str = "answer",
    image_root: str | None = None,
    skip_invalid_rows: bool = False,
    instruction: str | None = None,
    box_convention: str = "absolute_resized",
    min_pixels: int = QWEN_MIN_PIXELS,
    max_pixels: int = QWEN_MAX_PIXELS,
    with_images: bool = True,
) -> tuple[Dataset, int]:
    """RefCOCO-style rows -> RL rows with the box in ``box_convention`` (see module doc); ``(rows, n_skipped)``.

    Without images (``with_images=False``) the original image size comes from an ``image_size`` column
    (``[width, height]``); a row without one is an error naming it.
    """
    check_box_convention(box_convention)

    def make_record(row: dict, images: list[Image.Image], where: str) -> dict:
        if len(images) != 1:
            raise DataError(f"{where}, field {image_column!r}: grounding needs exactly one image, got {len(images)}.")
        expression = required_question(row, question_column, where)
        field_where = f"{where}, field {answer_column!r}"
        x1, y1, x2, y2 = _ground_truth_box(row[answer_column], field_where)
        if images[0] is not None:
            w, h = images[0].size
        else:
            size = row.get("image_size")
            if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(v, (int, float)) and v > 0
                                                                                 for v in size)):
                raise DataError(f"{where}, field 'image_size': without the image, the box needs the image size "
                                "[width, height] in an image_size column.")
            w, h = size
        t = BOX_TOLERANCE
        if x1 < -t or y1 < -t or x2 > w + t or y2 > h + t:
            raise DataError(f"{field_where}: box {[x1, y1, x2, y2]} lies outside the {w}x{h} image.")
        x1, x2 = min(max(x1, 0.0), w), min(max(x2, 0.0), w)
        y1, y2 = min(max(y1, 0.0), h), min(max(y2, 0.0), h)
        if box_convention == "absolute_original":
            sx, sy, size = 1.0, 1.0, [w, h]
        elif box_convention == "relative_1000":
            sx, sy, size = 1000.0 / w, 1000.0 / h, [1000, 1000]
        else:
            try:
                rh, rw = smart_resize(h, w, QWEN_FACTOR, min_pixels, max_pixels)
            except ValueError as err:
                raise DataError(f"{where}, field {image_column!r}: {err}") from None
            sx, sy, size = rw / w, rh / h, [rw, rh]
        box = [round(x1 * sx, 2), round(y1 * sy, 2), round(x2 * sx, 2), round(y2 * sy, 2)]
        return {
            "prompt": _prompt(_box_prompt(expression, box_convention), 1, instruction),
            "answer": json.dumps(box),
            "image_size": size,
        }

    return build_rows(
        dataset, split, (image_column, question_column, answer_column), image_column, make_record,
        image_root, skip_invalid_rows, consumed=(question_column, answer_column), with_images=with_images,
    )


# --------------------------------------------------------------------------------------------- classification


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def _is_class_root(path: Path) -> bool:
    """A folder whose subfolders hold images directly (``path/<class>/*.jpg``)."""
    return any(d.is_dir() and any(_is_image(f) for f in d.iterdir()) for d in path.iterdir() if d.is_dir())


def image_folder_dataset(root: Path, image_column: str = "image", label_column: str = "label") -> Dataset:
    """``root/<class>/*.jpg|jpeg|png`` as a Dataset (image path, ``ClassLabel`` label over every class folder,
    ``id`` = ``<class>/<file>``), files sorted by name so the row order does not depend on the file system."""
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    images, labels, ids = [], [], []
    for index, name in enumerate(classes):
        for f in sorted((root / name).iterdir(), key=lambda p: p.name):
            if _is_image(f):
                images.append(str(f.resolve()))
                labels.append(index)
                ids.append(f"{name}/{f.name}")
    features = Features({image_column: Value("string"), label_column: ClassLabel(names=classes), "id": Value("string")})
    return Dataset.from_dict({image_column: images, label_column: labels, "id": ids}, features=features)


def load_classification_raw(args: Any) -> DatasetDict | None:
    """An image folder as splits (``root/<split>/<class>/`` or ``root/<class>/`` = the train split); None if
    ``args.dataset`` is not such a folder, or holds data files (then it is loaded like any dataset)."""
    root = Path(args.dataset)
    if not root.is_dir() or any(f.suffix.lower() in DATA_SUFFIXES for f in root.rglob("*") if f.is_file()):
        return None  # a folder of data files (e.g. parquet + an images/ folder) is a dataset, not an image folder
    subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    split_dirs = [d for d in subdirs if _is_class_root(d)]
    if split_dirs:
        return DatasetDict({d.name: image_folder_dataset(d, args.image_column, args.answer_column) for d in split_dirs})
    if _is_class_root(root):
        return DatasetDict({args.train_split: image_folder_dataset(root, args.image_column, args.answer_column)})
    return None


def class_names_of(dataset: Dataset, label_column: str) -> list[str]:
    """Class names: the ``ClassLabel`` names of ``label_column``, else its sorted distinct non-empty strings."""
    if label_column not in dataset.column_names:
        raise DataError(
            f"classification: label column {label_column!r} not found; columns are {dataset.column_names}. "
            "Set --answer_column to the label column."
        )
    feature = dataset.features[label_column]
    if isinstance(feature, ClassLabel):
        return list(feature.names)
    if isinstance(feature, Value) and feature.dtype in ("string", "large_string"):
        names = sorted({str(v).strip() for v in dataset[label_column] if v is not None and str(v).strip()})
        if not names:
            raise DataError(f"classification: label column {label_column!r} holds no class names.")
        return names
    raise DataError(
        f"classification: label column {label_column!r} is {feature}; it must be a ClassLabel (int with names) "
        "or a string column holding the class name."
    )


def _label_name(value: Any, class_names: list[str], is_class_label: bool, where: str) -> str:
    if is_class_label:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < len(class_names):
            raise DataError(f"{where}: label {value!r} is not a class index 0..{len(class_names) - 1}.")
        return class_names[value]
    name = str(value).strip() if value is not None else ""
    if name not in class_names:
        raise DataError(f"{where}: label {value!r} is not one of the {len(class_names)} training classes.")
    return name


def sample_k_shot(
    labels: list[str | None], class_names: list[str], k: int, seed: int,
) -> list[int]:
    """Row indices of ``k`` rows per class, drawn without replacement, deterministic in ``seed``.

    ``labels[i]`` is row i's class name (None: an invalid row, never drawn). Each class draws from its own
    generator seeded by ``(seed, class name)``. A class with fewer than ``k`` rows raises :class:`DataError`.
    """
    if k < 1:
        raise DataError(f"k_shot must be >= 1, got {k}.")
    by_class: dict[str, list[int]] = {name: [] for name in class_names}
    for i, name in enumerate(labels):
        if name is not None and name in by_class:
            by_class[name].append(i)
    chosen: list[int] = []
    for name in class_names:
        rows = by_class[name]
        if len(rows) < k:
            raise DataError(f"classification: class {name!r} has {len(rows)} image(s), fewer than k_shot={k}.")
        chosen.extend(random.Random(f"{seed}/{name}").sample(rows, k))
    return sorted(chosen)


def _class_prompt(class_names: list[str], show_options: bool) -> str:
    text = "What is the category of the main object in this image? Give the name of the category inside <answer> </answer>."
    if show_options:
        text += " Choose one of: " + ", ".join(class_names) + "."
    return text


def to_classification_rows(
    dataset: Dataset,
    split: str,
    class_names: list[str],
    image_column: str = "image",
    label_column: str = "label",
    image_root: str | None = None,
    skip_invalid_rows: bool = False,
    instruction: str | None = None,
    show_options: bool = False,
    with_images: bool = True,
) -> tuple[Dataset, int]:
    """Labelled images -> RL rows whose ``answer`` is the class name; ``(rows, n_skipped)``."""
    is_class_label = isinstance(dataset.features.get(label_column), ClassLabel)
    question = _class_prompt(class_names, show_options)

    def make_record(row: dict, images: list[Image.Image], where: str) -> dict:
        name = _label_name(row[label_column], class_names, is_class_label, f"{where}, field {label_column!r}")
        return {"prompt": _prompt(question, len(images), instruction), "answer": name}

    return build_rows(
        dataset, split, (image_column, label_column), image_column, make_record, image_root, skip_invalid_rows,
        consumed=(label_column,), column_hint="Map yours with --image_column / --answer_column (the label).",
        with_images=with_images,
    )


# --------------------------------------------------------------------------------------------- multiple choice

_LETTER = re.compile(r"\(?([A-Za-z])\)?[.:)]?")


def _options(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise DataError(f"{where}: options must be a list (or a JSON list string), got {value!r}.") from None
    if not isinstance(value, (list, tuple)):
        raise DataError(f"{where}: options must be a list, got {type(value).__name__}.")
    options = [str(v).strip() if v is not None else "" for v in value]
    if len(options) < 2:
        raise DataError(f"{where}: {len(options)} option(s); a multiple-choice row needs at least 2.")
    if len(options) > 26:
        raise DataError(f"{where}: {len(options)} options; at most 26 (A-Z) are supported.")
    if any(not o for o in options):
        raise DataError(f"{where}: empty option text in {options}.")
    from pepo.rewards.choice import normalize_choice_text

    normalised = [normalize_choice_text(o) for o in options]
    if len(set(normalised)) != len(normalised):
        raise DataError(f"{where}: duplicate options in {options}; the answer would be ambiguous.")
    return options


def _answer_index(answer: Any, options: list[str], where: str) -> int:
    from pepo.rewards.choice import normalize_choice_text

    text = str(answer).strip() if answer is not None else ""
    if not text:
        raise DataError(f"{where}: empty answer.")
    if text in options:
        return options.index(text)
    target = normalize_choice_text(text)
    matches = [i for i, o in enumerate(options) if normalize_choice_text(o) == target]
    if len(matches) == 1:
        return matches[0]
    letter = _LETTER.fullmatch(text)
    if letter:
        index = ord(letter.group(1).upper()) - ord("A")
        if index < len(options):
            return index
    raise DataError(
        f"{where}: answer {text!r} is not among the options {options} (neither an option's text nor a letter "
        f"A-{chr(ord('A') + len(options) - 1)})."
    )


def to_multiple_choice_rows(
    dataset: Dataset,
    split: str,
    image_column: str = "image",
    question_column: str = "question",
    answer_column: str = "answer",
    options_column: str = "options",
    image_root: str | None = None,
    skip_invalid_rows: bool = False,
    instruction: str | None = None,
    with_images: bool = True,
) -> tuple[Dataset, int]:
    """Question + options rows -> RL rows with a letter ``answer`` and a ``choices`` column; ``(rows, n_skipped)``."""

    def make_record(row: dict, images: list[Image.Image], where: str) -> dict:
        question = required_question(row, question_column, where)
        options = _options(row[options_column], f"{where}, field {options_column!r}")
        index = _answer_index(row[answer_column], options, f"{where}, field {answer_column!r}")
        listed = "\n".join(f"({chr(ord('A') + i)}) {o}" for i, o in enumerate(options))
        text = (f"{question.strip()}\n\nOptions:\n{listed}\n\n"
                "Answer with the letter of the correct option inside <answer> </answer>.")
        return {"prompt": _prompt(text, len(images), instruction), "answer": chr(ord("A") + index),
                "choices": options}

    return build_rows(
        dataset, split, (image_column, question_column, answer_column, options_column), image_column, make_record,
        image_root, skip_invalid_rows, consumed=(question_column, answer_column, options_column),
        column_hint="Map yours with --image_column / --question_column / --answer_column / --options_column.",
        with_images=with_images,
    )


# --------------------------------------------------------------------------------------------- dispatch


def make_adapter(
    dataset_format: str, args: Any, train: Dataset, seed: int = 0,
) -> Callable[[Dataset, str, str], tuple[Dataset, int]]:
    """``adapt(data, split, role) -> (rows, n_skipped)`` for a non-generic ``dataset_format``.

    ``train`` is the raw train split (classification reads its class names there, so every split shares them).
    """
    check_dataset_format(dataset_format)
    common = dict(
        image_column=args.image_column, image_root=args.image_root,
        skip_invalid_rows=getattr(args, "skip_invalid_rows", False),
        instruction=getattr(args, "prompt_instruction", None), with_images=getattr(args, "with_images", True),
    )
    if dataset_format == "grounding":
        convention = check_box_convention(getattr(args, "box_convention", "absolute_resized"))

        def adapt(data: Dataset, split: str, role: str) -> tuple[Dataset, int]:
            return to_grounding_rows(
                data, split, question_column=args.question_column, answer_column=args.answer_column,
                box_convention=convention, min_pixels=getattr(args, "min_pixels", QWEN_MIN_PIXELS),
                max_pixels=getattr(args, "max_pixels", QWEN_MAX_PIXELS), **common,
            )

        return adapt
    if dataset_format == "multiple_choice":

        def adapt(data: Dataset, split: str, role: str) -> tuple[Dataset, int]:
            return to_multiple_choice_rows(
                data, split, question_column=args.question_column, answer_column=args.answer_column,
                options_column=getattr(args, "options_column", "options"), **common,
            )

        return adapt
    if dataset_format == "classification":
        label_column = args.answer_column
        class_names = class_names_of(train, label_column)
        k_shot = getattr(args, "k_shot", None)

        def adapt(data: Dataset, split: str, role: str) -> tuple[Dataset, int]:
            n_bad = 0
            if role == "train" and k_shot:
                is_class_label = isinstance(data.features.get(label_column), ClassLabel)
                labels: list[str | None] = []
                for i, value in enumerate(data[label_column]):
                    try:
                        labels.append(_label_name(value, class_names, is_class_label,
                                                  f"split {split!r} row {i}, field {label_column!r}"))
                    except DataError:
                        if not common["skip_invalid_rows"]:
                            raise
                        labels.append(None)
                        n_bad += 1
                data = data.select(sample_k_shot(labels, class_names, k_shot, seed))
            rows, skipped = to_classification_rows(
                data, split, class_names, label_column=label_column,
                show_options=getattr(args, "classification_show_options", False), **common,
            )
            return rows, skipped + n_bad

        return adapt
    raise ValueError(f"dataset_format {dataset_format!r} has no adapter (generic uses to_rl_rows).")
