"""Procedurally generated visual-reasoning data for the embedded CPU demo (no downloads).

Every example is a small RGB image of flat-coloured shapes on a plain background together with a
question whose short answer can only be obtained by *looking at the image*: the question text
alone carries no information about the answer, because answers are balanced within each question
type (see "Chance levels" below).

Layout
------
The image (``image_size`` x ``image_size`` pixels, 112 by default) is split into a ``grid`` x
``grid`` lattice of cells (4 x 4 cells of 28 x 28 pixels by default).  28 pixels is exactly the
footprint of one Qwen2.5-VL vision token (14-pixel patches merged 2 x 2), so with the defaults each
cell becomes one of the 16 image tokens.  Each shape lives entirely inside its own cell (at most one
shape per cell, jittered in size and position), so shapes never overlap, never touch (at least
``2 * margin`` pixels apart) and each shape is seen whole by a single token.

Question types (``QUESTION_TYPES``)
-----------------------------------
``count_all``
    "how many shapes are there ?" -> "1" .. "5" (``min_shapes`` .. ``max_shapes``).
``count_color``
    "how many red shapes are there ?" (red / green / blue) -> "0" .. "5" (0 .. ``max_shapes``).
``count_shape``
    "how many circles are there ?" (circles / squares / triangles) -> "0" .. "5".
``compare_colors``
    "are there more red shapes than blue shapes ?" -> "yes" / "no".  Ties never occur.

Chance levels (defaults ``min_shapes=1``, ``max_shapes=5``)
-----------------------------------------------------------
The target answer is sampled *first*, uniformly, and the scene is built around it, so the best
answer-blind strategy (always output the most frequent answer) scores:

* ``count_all``: 1 / (max_shapes - min_shapes + 1) = 20 %
* ``count_color``: 1 / (max_shapes + 1) ~= 16.7 %
* ``count_shape``: 1 / (max_shapes + 1) ~= 16.7 %
* ``compare_colors``: 50 %

(Averaged over the four types cycled evenly: ~26 %.)  See :func:`chance_accuracy`.

Prompt format
-------------
:func:`build_prompt` puts the question text BEFORE the image.  Feasibility probes with a ~0.5M
parameter VLM showed that colour-conditioned counting stays near chance when the image comes first
(a tiny causal model then has to remember every shape's colour before knowing which colour matters);
with the question first, the image tokens can already attend to "red" / "circles".
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from dataclasses import dataclass
from typing import Any

import datasets
from PIL import Image, ImageDraw

from pepo.rewards.exact_match import exact_match_reward

__all__ = [
    "QUESTION_TYPES",
    "COLORS",
    "SHAPES",
    "SyntheticConfig",
    "make_example",
    "build_prompt",
    "make_split",
    "make_splits",
    "answer_vocabulary",
    "text_corpus",
    "chance_accuracy",
    "synthetic_accuracy_reward",
    "score_by_type",
]

#: Names of the question types, in the order :func:`make_split` cycles through them.
QUESTION_TYPES: tuple[str, ...] = ("count_all", "count_color", "count_shape", "compare_colors")

#: Colour name -> RGB.  Saturated and far apart so that they are trivially separable both by a
#: tiny vision encoder and by exact pixel matching in the tests (PIL's ImageDraw does not
#: anti-alias, so every shape pixel has exactly one of these values).
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (20, 160, 40),
    "blue": (30, 60, 220),
}

#: Shape names (singular) and the plural used in ``count_shape`` questions.
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
_PLURALS: dict[str, str] = {"circle": "circles", "square": "squares", "triangle": "triangles"}

_YES, _NO = "yes", "no"


@dataclass
class SyntheticConfig:
    """Parameters of the synthetic scene generator.

    Attributes:
        image_size: Side of the square RGB image, in pixels (default 112 -> 16 Qwen2.5-VL tokens).
        grid: Number of cells per side; shapes are placed at most one per cell.  The cell side is
            ``image_size // grid`` pixels (28 by default = one Qwen2.5-VL vision token).
        min_shapes: Minimum number of shapes in a scene (>= 0).  Also the smallest ``count_all``
            answer.  ``count_color`` / ``count_shape`` / ``compare_colors`` may need more shapes than
            this to realise their sampled target, never fewer.
        max_shapes: Maximum number of shapes in a scene (<= ``grid ** 2``, >= 1).  Largest count answer.
        question_types: Which question types to generate (subset of :data:`QUESTION_TYPES`).
        shape_size: Inclusive ``(min, max)`` side length of a shape's bounding box, in pixels.
            ``max`` must fit in a cell after the margins: ``max <= cell - 2 * margin``.
        margin: Minimum gap, in pixels, between a shape and the border of its cell, so that shapes
            in neighbouring cells are at least ``2 * margin`` pixels apart (never touching).
        background: RGB background colour (plain, no texture); must differ from all :data:`COLORS`.
    """

    image_size: int = 112
    grid: int = 4
    min_shapes: int = 1
    max_shapes: int = 5
    question_types: tuple[str, ...] = QUESTION_TYPES
    shape_size: tuple[int, int] = (14, 24)
    margin: int = 2
    background: tuple[int, int, int] = (255, 255, 255)

    def __post_init__(self) -> None:
        # Validate eagerly: a bad config would otherwise surface as an obscure sampling error.
        self.question_types = tuple(self.question_types)
        self.shape_size = (int(self.shape_size[0]), int(self.shape_size[1]))
        self.background = tuple(int(c) for c in self.background)  # type: ignore[assignment]
        unknown = [q for q in self.question_types if q not in QUESTION_TYPES]
        if unknown or not self.question_types:
            raise ValueError(
                f"question_types must be a non-empty subset of {QUESTION_TYPES}, got {self.question_types}"
            )
        if self.grid < 1 or self.image_size < self.grid:
            raise ValueError("need grid >= 1 and image_size >= grid")
        if not (0 <= self.min_shapes <= self.max_shapes <= self.grid**2) or self.max_shapes < 1:
            raise ValueError(
                f"need 0 <= min_shapes <= max_shapes <= grid**2 and max_shapes >= 1, got "
                f"{self.min_shapes}, {self.max_shapes}, grid={self.grid}"
            )
        lo, hi = self.shape_size
        if not (3 <= lo <= hi <= self.cell_size - 2 * self.margin) or self.margin < 0:
            raise ValueError(
                f"shape_size {self.shape_size} must satisfy 3 <= min <= max <= "
                f"cell ({self.cell_size}) - 2 * margin ({self.margin})"
            )
        if self.background in COLORS.values():
            raise ValueError("background colour must differ from every shape colour")

    @property
    def cell_size(self) -> int:
        """Side of one grid cell, in pixels."""
        return self.image_size // self.grid


# --------------------------------------------------------------------------------------------
# Question texts.  Lower case, space before "?" so that a tiny word-level tokenizer sees "?" as
# its own token; the vocabulary stays small (~25 words).
# --------------------------------------------------------------------------------------------


def _q_count_all() -> str:
    return "how many shapes are there ?"


def _q_count_color(color: str) -> str:
    return f"how many {color} shapes are there ?"


def _q_count_shape(shape: str) -> str:
    return f"how many {_PLURALS[shape]} are there ?"


def _q_compare(color_a: str, color_b: str) -> str:
    return f"are there more {color_a} shapes than {color_b} shapes ?"


# --------------------------------------------------------------------------------------------
# Scene sampling
# --------------------------------------------------------------------------------------------


def _plan(rng: random.Random, config: SyntheticConfig, question_type: str) -> tuple[list[tuple[str, str]], str, str]:
    """Sample the (shape, colour) multiset of a scene, the question and its answer.

    The answer is drawn first (uniformly over its range) and the scene is built to match it, which
    is what keeps the answer distribution balanced within each question type.
    """
    lo_n, hi_n = config.min_shapes, config.max_shapes
    colors, shapes = list(COLORS), list(SHAPES)

    if question_type == "count_all":
        n = rng.randint(lo_n, hi_n)
        items = [(rng.choice(shapes), rng.choice(colors)) for _ in range(n)]
        return items, _q_count_all(), str(n)

    if question_type == "count_color":
        target = rng.choice(colors)
        k = rng.randint(0, hi_n)
        n = rng.randint(max(lo_n, k), hi_n)
        others = [c for c in colors if c != target]
        items = [(rng.choice(shapes), target) for _ in range(k)]
        items += [(rng.choice(shapes), rng.choice(others)) for _ in range(n - k)]
        return items, _q_count_color(target), str(k)

    if question_type == "count_shape":
        target = rng.choice(shapes)
        k = rng.randint(0, hi_n)
        n = rng.randint(max(lo_n, k), hi_n)
        others = [s for s in shapes if s != target]
        items = [(target, rng.choice(colors)) for _ in range(k)]
        items += [(rng.choice(others), rng.choice(colors)) for _ in range(n - k)]
        return items, _q_count_shape(target), str(k)

    if question_type == "compare_colors":
        color_a, color_b = rng.sample(colors, 2)
        third = next(c for c in colors if c not in (color_a, color_b))
        # All (larger, smaller) count pairs that fit in a scene; ties are excluded so the question
        # always has a definite answer.  Pick one uniformly, then flip a fair coin for which colour
        # gets the larger count -> exactly 50 % "yes".
        pairs = [(hi, lo) for hi in range(1, hi_n + 1) for lo in range(hi) if hi + lo <= hi_n]
        big, small = rng.choice(pairs)
        answer = rng.choice((_YES, _NO))
        n_a, n_b = (big, small) if answer == _YES else (small, big)
        n = rng.randint(max(lo_n, n_a + n_b), hi_n)
        items = [(rng.choice(shapes), color_a) for _ in range(n_a)]
        items += [(rng.choice(shapes), color_b) for _ in range(n_b)]
        items += [(rng.choice(shapes), third) for _ in range(n - n_a - n_b)]
        return items, _q_compare(color_a, color_b), answer

    raise ValueError(f"unknown question_type {question_type!r}; expected one of {QUESTION_TYPES}")


def _draw_shape(
    draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], rgb: tuple[int, int, int]
) -> None:
    # ``box`` is (x0, y0, x1, y1) with x1/y1 exclusive (PIL crop convention); PIL's drawing
    # primitives take inclusive end coordinates, hence the -1.
    x0, y0, x1, y1 = box
    if shape == "square":
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=rgb)
    elif shape == "circle":
        draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=rgb)
    elif shape == "triangle":
        # Upright isosceles triangle filling the box: base on the bottom edge, apex top-centre.
        draw.polygon([(x0, y1 - 1), (x1 - 1, y1 - 1), ((x0 + x1 - 1) / 2, y0)], fill=rgb)
    else:  # pragma: no cover - guarded by SHAPES
        raise ValueError(f"unknown shape {shape!r}")


def make_example(rng: random.Random, config: SyntheticConfig, question_type: str | None = None) -> dict[str, Any]:
    """Generate one image / question / answer example.

    Args:
        rng: Source of randomness; the example is a deterministic function of its state.
        config: Generator parameters.
        question_type: One of ``config.question_types``; ``None`` draws one uniformly with ``rng``.

    Returns:
        A dict with

        * ``"image"``: ``PIL.Image.Image`` in mode RGB, ``image_size`` x ``image_size`` pixels;
        * ``"question"``: the question text (str);
        * ``"answer"``: the ground-truth short answer (str, e.g. ``"3"`` or ``"yes"``);
        * ``"question_type"``: the question type (str);
        * ``"shapes"``: list of ``(shape, colour, (x0, y0, x1, y1))`` with the pixel bounding box of
          each drawn shape (x1 / y1 exclusive), for checking.
    """
    if question_type is None:
        question_type = rng.choice(config.question_types)
    items, question, answer = _plan(rng, config, question_type)

    cell = config.cell_size
    lo_s, hi_s = config.shape_size
    # Distinct cells -> no overlap by construction.  The order of ``items`` (targets first) is
    # decoupled from the layout because the cells themselves are a random sample.
    cells = rng.sample(range(config.grid**2), len(items))
    image = Image.new("RGB", (config.image_size, config.image_size), config.background)
    draw = ImageDraw.Draw(image)
    placed: list[tuple[str, str, tuple[int, int, int, int]]] = []
    for (shape, color), cell_index in zip(items, cells):
        row, col = divmod(cell_index, config.grid)
        size = rng.randint(lo_s, hi_s)
        # Jitter inside the cell, keeping ``margin`` free pixels on every side.
        slack = cell - 2 * config.margin - size
        x0 = col * cell + config.margin + rng.randint(0, slack)
        y0 = row * cell + config.margin + rng.randint(0, slack)
        box = (x0, y0, x0 + size, y0 + size)
        _draw_shape(draw, shape, box, COLORS[color])
        placed.append((shape, color, box))

    return {
        "image": image,
        "question": question,
        "answer": answer,
        "question_type": question_type,
        "shapes": placed,
    }


def build_prompt(question: str, system: str | None = None) -> list[dict[str, Any]]:
    """Build a conversational prompt in TRL's VLM format, question text FIRST, then the image.

    Args:
        question: The question text.
        system: Optional system message, prepended as a ``{"role": "system"}`` turn.

    Returns:
        ``[{"role": "user", "content": [{"type": "text", "text": question}, {"type": "image"}]}]``
        (preceded by the system turn when given).  The image placeholder is filled by TRL from the
        dataset's ``"image"`` column.  The text-before-image order is deliberate (see module docs).
    """
    messages: list[dict[str, Any]] = []
    if system is not None:
        messages.append({"role": "system", "content": [{"type": "text", "text": system}]})
    messages.append({"role": "user", "content": [{"type": "text", "text": question}, {"type": "image"}]})
    return messages


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------


def _example_rng(seed: int, index: int, attempt: int) -> random.Random:
    # One RNG per example, seeded from a string (str seeds are hashed with SHA-512 by ``random``,
    # independent of PYTHONHASHSEED): example i of a split is reproducible on its own, and a
    # rejected example can be redrawn (attempt += 1) without shifting every later example.
    return random.Random(f"pepo-synthetic/{seed}/{index}/{attempt}")


def _key(image: Image.Image, question: str) -> bytes:
    # Identity of an example for de-duplication: the raw pixels plus the question text.
    h = hashlib.blake2b(image.tobytes(), digest_size=16)
    h.update(question.encode("utf-8"))
    return h.digest()


def _features() -> datasets.Features:
    text_part = {"type": datasets.Value("string"), "text": datasets.Value("string")}
    message = {"role": datasets.Value("string"), "content": datasets.List(text_part)}
    return datasets.Features(
        {
            "id": datasets.Value("string"),
            "prompt": datasets.List(message),
            "image": datasets.Image(),
            "answer": datasets.Value("string"),
            "question_type": datasets.Value("string"),
        }
    )


def _generate(
    n: int, seed: int, config: SyntheticConfig, exclude: set[bytes] | None = None, max_attempts: int = 1000
) -> tuple[dict[str, list[Any]], set[bytes]]:
    """Generate ``n`` examples as columns; examples whose key is in ``exclude`` are redrawn."""
    columns: dict[str, list[Any]] = {k: [] for k in ("id", "prompt", "image", "answer", "question_type")}
    keys: set[bytes] = set()
    types = config.question_types
    for i in range(n):
        qtype = types[i % len(types)]  # cycle evenly through the question types
        for attempt in range(max_attempts):
            ex = make_example(_example_rng(seed, i, attempt), config, qtype)
            key = _key(ex["image"], ex["question"])
            if exclude is None or key not in exclude:
                break
        else:  # pragma: no cover - only with absurdly small scene spaces
            raise RuntimeError(f"could not draw an example outside the excluded set after {max_attempts} attempts")
        keys.add(key)
        columns["id"].append(f"{seed}-{i}")
        columns["prompt"].append(build_prompt(ex["question"]))
        columns["image"].append(ex["image"])
        columns["answer"].append(ex["answer"])
        columns["question_type"].append(qtype)
    return columns, keys


def make_split(n: int, seed: int, config: SyntheticConfig | None = None) -> datasets.Dataset:
    """Generate a dataset split of ``n`` examples.

    Args:
        n: Number of examples.
        seed: Split seed.  Example ``i`` depends only on ``(seed, i)`` and ``config``, so the same
            seed gives the same images pixel-for-pixel and the same texts.
        config: Generator parameters (default :class:`SyntheticConfig()`).

    Returns:
        A :class:`datasets.Dataset` with columns ``"id"`` (``f"{seed}-{i}"``), ``"prompt"`` (see
        :func:`build_prompt`), ``"image"`` (``datasets.Image``; PNG, i.e. lossless), ``"answer"``
        and ``"question_type"``.  Question types are cycled in ``config.question_types`` order, so
        each type gets ``n / len(question_types)`` examples (+-1).

    Note:
        After the Arrow round trip the image placeholder reads back as
        ``{"type": "image", "text": None}``; TRL and the Qwen2.5-VL chat template accept that.
    """
    config = config if config is not None else SyntheticConfig()
    columns, _ = _generate(n, seed, config)
    return datasets.Dataset.from_dict(columns, features=_features())


def make_splits(
    n_train: int, n_test: int, seed: int = 0, config: SyntheticConfig | None = None
) -> datasets.DatasetDict:
    """Generate disjoint ``"train"`` and ``"test"`` splits.

    The train split uses split seed ``2 * seed`` and the test split ``2 * seed + 1``, so their
    seeds (and therefore their ids) differ for every ``seed``.  Any test example whose
    (pixels, question) pair also occurs in train is redrawn, so the two splits share no
    (image, question) pair.  Such collisions are rare anyway (mostly one-shape ``count_all``
    scenes: roughly 1 in 10^5 chance per pair of such examples).

    Args:
        n_train: Number of training examples.
        n_test: Number of test examples.
        seed: Base seed.
        config: Generator parameters (default :class:`SyntheticConfig()`).

    Returns:
        ``datasets.DatasetDict({"train": ..., "test": ...})`` with the columns of :func:`make_split`.
    """
    config = config if config is not None else SyntheticConfig()
    train_cols, train_keys = _generate(n_train, 2 * seed, config)
    test_cols, _ = _generate(n_test, 2 * seed + 1, config, exclude=train_keys)
    features = _features()
    return datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(train_cols, features=features),
            "test": datasets.Dataset.from_dict(test_cols, features=features),
        }
    )


# --------------------------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------------------------


def _questions(question_type: str) -> list[str]:
    if question_type == "count_all":
        return [_q_count_all()]
    if question_type == "count_color":
        return [_q_count_color(c) for c in COLORS]
    if question_type == "count_shape":
        return [_q_count_shape(s) for s in SHAPES]
    if question_type == "compare_colors":
        return [_q_compare(a, b) for a in COLORS for b in COLORS if a != b]
    raise ValueError(f"unknown question_type {question_type!r}")


def _answers(question_type: str, config: SyntheticConfig) -> list[str]:
    if question_type == "count_all":
        return [str(k) for k in range(config.min_shapes, config.max_shapes + 1)]
    if question_type in ("count_color", "count_shape"):
        return [str(k) for k in range(0, config.max_shapes + 1)]
    if question_type == "compare_colors":
        return [_YES, _NO]
    raise ValueError(f"unknown question_type {question_type!r}")


def answer_vocabulary(config: SyntheticConfig | None = None) -> list[str]:
    """Every answer string the generator can produce under ``config`` (sorted, unique).

    Args:
        config: Generator parameters (default :class:`SyntheticConfig()`).

    Returns:
        E.g. ``["0", "1", "2", "3", "4", "5", "no", "yes"]`` for the defaults.
    """
    config = config if config is not None else SyntheticConfig()
    return sorted({a for q in config.question_types for a in _answers(q, config)})


def text_corpus(config: SyntheticConfig | None = None) -> list[str]:
    """Every question text and every answer string the generator can produce (unique, stable order).

    Intended as training text for the demo's tiny tokenizer.  It does not contain chat-template or
    reasoning-format strings (e.g. ``<answer>``); add those yourself.

    Args:
        config: Generator parameters (default :class:`SyntheticConfig()`).

    Returns:
        List of strings: all questions (13 with the defaults) followed by :func:`answer_vocabulary`.
    """
    config = config if config is not None else SyntheticConfig()
    questions = [q for t in config.question_types for q in _questions(t)]
    return list(dict.fromkeys(questions + answer_vocabulary(config)))


def chance_accuracy(config: SyntheticConfig | None = None) -> dict[str, float]:
    """Expected accuracy of the best constant (image-blind, question-blind-per-type) answer.

    Args:
        config: Generator parameters (default :class:`SyntheticConfig()`).

    Returns:
        ``{question_type: chance}`` plus ``"overall"`` (mean over the evenly cycled types), e.g.
        ``count_all`` 0.2, ``count_color`` / ``count_shape`` 1/6, ``compare_colors`` 0.5.
    """
    config = config if config is not None else SyntheticConfig()
    # Counts are uniform over their answer range; compare is a fair coin.
    out = {t: 1.0 / len(_answers(t, config)) for t in config.question_types}
    out["overall"] = sum(out.values()) / len(config.question_types)
    return out


# --------------------------------------------------------------------------------------------
# Reward / scoring
# --------------------------------------------------------------------------------------------

def synthetic_accuracy_reward(completions: list[Any], answer: list[str], **kwargs: Any) -> list[float]:
    """Exact match of the first ``<answer>`` span (or the whole text) with ``answer``: TRL's reward signature.

    The task's answers are single short words, so the shared :func:`pepo.rewards.exact_match_reward`
    (NFKC, case-folded, trailing full stop dropped; empty predictions score 0) is the whole rule.
    """
    return exact_match_reward(completions, answer, **kwargs)


def score_by_type(predictions: list[str], answers: list[str], question_types: list[str]) -> dict[str, float]:
    """Accuracy per question type and overall, with the same matching as the reward.

    Args:
        predictions: Model outputs (raw completions; ``<answer>`` spans are extracted).
        answers: Ground-truth answers.
        question_types: Question type of each example.

    Returns:
        ``{question_type: accuracy, ..., "overall": accuracy}`` with types in order of first
        appearance; accuracies are fractions in [0, 1].  Empty input gives ``{"overall": 0.0}``.
    """
    if not (len(predictions) == len(answers) == len(question_types)):
        raise ValueError("predictions, answers and question_types must have the same length")
    correct = exact_match_reward(list(predictions), list(answers))
    totals: Counter[str] = Counter()
    hits: Counter[str] = Counter()
    for qtype, c in zip(question_types, correct):
        totals[qtype] += 1
        hits[qtype] += c
    out = {t: hits[t] / totals[t] for t in totals}
    out["overall"] = sum(correct) / len(correct) if correct else 0.0
    return out
