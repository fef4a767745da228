"""Tests for pepo.data.synthetic: determinism, correctness from shapes AND pixels, balance, format, reward."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from PIL import Image

from pepo.data.synthetic import (
    COLORS,
    QUESTION_TYPES,
    SHAPES,
    SyntheticConfig,
    answer_vocabulary,
    build_prompt,
    chance_accuracy,
    make_example,
    make_split,
    make_splits,
    score_by_type,
    synthetic_accuracy_reward,
    text_corpus,
)

CFG = SyntheticConfig()
_PLURAL_TO_SHAPE = {s + "s": s for s in SHAPES}


def _examples(n: int, seed: int = 123, config: SyntheticConfig = CFG) -> list[dict]:
    rng = random.Random(seed)
    return [make_example(rng, config, QUESTION_TYPES[i % len(QUESTION_TYPES)]) for i in range(n)]


def _answer_from_inventory(question: str, inventory: list[tuple[str, str]]) -> str:
    """Recompute the answer to ``question`` from a list of (shape, colour) pairs, by parsing the text."""
    words = question.rstrip(" ?").split()
    colors = Counter(c for _, c in inventory)
    shapes = Counter(s for s, _ in inventory)
    if question == "how many shapes are there ?":
        return str(len(inventory))
    if words[:2] == ["how", "many"] and words[2] in COLORS:
        return str(colors[words[2]])
    if words[:2] == ["how", "many"] and words[2] in _PLURAL_TO_SHAPE:
        return str(shapes[_PLURAL_TO_SHAPE[words[2]]])
    if words[:3] == ["are", "there", "more"]:
        a, b = words[3], words[6]
        assert colors[a] != colors[b], "compare question with a tie"
        return "yes" if colors[a] > colors[b] else "no"
    raise AssertionError(f"unparsed question {question!r}")


def _inventory_from_pixels(image: Image.Image, config: SyntheticConfig) -> list[tuple[str, str]]:
    """Read (shape, colour) pairs back from the pixels only, one grid cell at a time.

    ImageDraw does not anti-alias, so every shape pixel has exactly a COLORS value.  The shape is
    recognised from the fraction of its tight bounding box it fills: square 1.0, circle ~pi/4,
    triangle ~1/2.
    """
    px = image.load()
    rgb_to_name = {v: k for k, v in COLORS.items()}
    cell = config.cell_size
    found = []
    for row in range(config.grid):
        for col in range(config.grid):
            pts: dict[str, list[tuple[int, int]]] = {}
            for y in range(row * cell, (row + 1) * cell):
                for x in range(col * cell, (col + 1) * cell):
                    name = rgb_to_name.get(px[x, y])
                    if name is not None:
                        pts.setdefault(name, []).append((x, y))
                    else:
                        assert px[x, y] == config.background, f"unexpected pixel colour {px[x, y]}"
            assert len(pts) <= 1, "two colours in one cell"
            for color, p in pts.items():
                xs, ys = [q[0] for q in p], [q[1] for q in p]
                fill = len(p) / ((max(xs) - min(xs) + 1) * (max(ys) - min(ys) + 1))
                shape = "square" if fill > 0.9 else "circle" if fill > 0.65 else "triangle"
                found.append((shape, color))
    return found


def _count_components(image: Image.Image, background: tuple[int, int, int]) -> int:
    """Number of 8-connected non-background blobs (iterative flood fill)."""
    w, h = image.size
    px = image.load()
    seen = [[False] * w for _ in range(h)]
    blobs = 0
    for y0 in range(h):
        for x0 in range(w):
            if seen[y0][x0] or px[x0, y0] == background:
                continue
            blobs += 1
            stack = [(x0, y0)]
            seen[y0][x0] = True
            while stack:
                x, y = stack.pop()
                for dx in (-1, 0, 1):
                    for dy in (-1, 0, 1):
                        nx, ny = x + dx, y + dy
                        if 0 <= nx < w and 0 <= ny < h and not seen[ny][nx] and px[nx, ny] != background:
                            seen[ny][nx] = True
                            stack.append((nx, ny))
    return blobs


# ------------------------------------------------------------------------------------ determinism


def test_make_example_deterministic():
    a = make_example(random.Random(7), CFG, "count_color")
    b = make_example(random.Random(7), CFG, "count_color")
    c = make_example(random.Random(8), CFG, "count_color")
    assert a["image"].tobytes() == b["image"].tobytes()
    assert (a["question"], a["answer"], a["shapes"]) == (b["question"], b["answer"], b["shapes"])
    assert a["image"].tobytes() != c["image"].tobytes()


def test_make_split_deterministic_and_seed_dependent():
    d1, d2, d3 = make_split(12, seed=5), make_split(12, seed=5), make_split(12, seed=6)
    for r1, r2 in zip(d1, d2):
        assert r1["image"].convert("RGB").tobytes() == r2["image"].convert("RGB").tobytes()
        assert (r1["id"], r1["prompt"], r1["answer"], r1["question_type"]) == (
            r2["id"],
            r2["prompt"],
            r2["answer"],
            r2["question_type"],
        )
    imgs1 = [r["image"].convert("RGB").tobytes() for r in d1]
    imgs3 = [r["image"].convert("RGB").tobytes() for r in d3]
    assert imgs1 != imgs3
    assert set(d1["id"]).isdisjoint(d3["id"])


# ------------------------------------------------------------------------------------ correctness


def test_image_properties():
    for ex in _examples(8):
        assert ex["image"].mode == "RGB"
        assert ex["image"].size == (CFG.image_size, CFG.image_size)
        assert ex["question_type"] in QUESTION_TYPES


def test_answer_matches_shapes_list_and_pixels():
    examples = _examples(48)
    for ex in examples:
        inventory = [(s, c) for s, c, _ in ex["shapes"]]
        assert _answer_from_inventory(ex["question"], inventory) == ex["answer"]
        from_pixels = _inventory_from_pixels(ex["image"], CFG)
        assert Counter(from_pixels) == Counter(inventory)
        assert _answer_from_inventory(ex["question"], from_pixels) == ex["answer"]
    # Separate, layout-agnostic check that shapes are disjoint blobs (flood fill) on a subset.
    for ex in examples[:12]:
        assert _count_components(ex["image"], CFG.background) == len(ex["shapes"])


def test_shapes_inside_image_and_non_overlapping():
    for ex in _examples(200, seed=9):
        boxes = [box for _, _, box in ex["shapes"]]
        assert CFG.min_shapes <= len(boxes) <= CFG.max_shapes
        for x0, y0, x1, y1 in boxes:
            assert 0 <= x0 < x1 <= CFG.image_size and 0 <= y0 < y1 <= CFG.image_size
            assert CFG.shape_size[0] <= x1 - x0 <= CFG.shape_size[1]
            # each shape stays in its own grid cell (so one vision token sees it whole)
            cell = CFG.cell_size
            assert x0 // cell == (x1 - 1) // cell and y0 // cell == (y1 - 1) // cell
        for i, a in enumerate(boxes):
            for b in boxes[i + 1 :]:
                assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (a, b)


def test_other_config_respected():
    cfg = SyntheticConfig(image_size=84, grid=3, min_shapes=2, max_shapes=4, shape_size=(10, 20), background=(0, 0, 0))
    for ex in _examples(40, config=cfg):
        assert ex["image"].size == (84, 84)
        assert 2 <= len(ex["shapes"]) <= 4
        assert Counter(_inventory_from_pixels(ex["image"], cfg)) == Counter((s, c) for s, c, _ in ex["shapes"])
    with pytest.raises(ValueError):
        SyntheticConfig(shape_size=(10, 30))
    with pytest.raises(ValueError):
        SyntheticConfig(max_shapes=17)
    with pytest.raises(ValueError):
        SyntheticConfig(question_types=("bogus",))


# ------------------------------------------------------------------------------------ balance


def test_answer_balance():
    # Bounds: counts are uniform by construction (20 % for count_all, 1/6 otherwise); with 400
    # samples per type the max share stays far below 30 %.  compare_colors is a fair coin.
    rng = random.Random(2024)
    for qtype in QUESTION_TYPES:
        answers = Counter(make_example(rng, CFG, qtype)["answer"] for _ in range(400))
        top_share = answers.most_common(1)[0][1] / 400
        if qtype == "compare_colors":
            assert set(answers) == {"yes", "no"}
            assert 0.4 <= answers["yes"] / 400 <= 0.6
        else:
            assert top_share < 0.3, (qtype, answers)
            assert len(answers) >= 5, (qtype, answers)
    chance = chance_accuracy()
    assert chance["count_all"] == pytest.approx(0.2)
    assert chance["count_color"] == pytest.approx(1 / 6)
    assert chance["compare_colors"] == pytest.approx(0.5)


def test_split_cycles_question_types():
    ds = make_split(20, seed=1)
    counts = Counter(ds["question_type"])
    assert set(counts) == set(QUESTION_TYPES) and set(counts.values()) == {5}


# ------------------------------------------------------------------------------------ format


def test_prompt_text_before_image():
    prompt = build_prompt("how many shapes are there ?")
    assert prompt == [
        {"role": "user", "content": [{"type": "text", "text": "how many shapes are there ?"}, {"type": "image"}]}
    ]
    with_system = build_prompt("q ?", system="sys")
    assert with_system[0]["role"] == "system" and with_system[1]["content"][0]["type"] == "text"
    # after the Arrow round trip the order is kept
    row = make_split(2, seed=0)[0]
    parts = row["prompt"][0]["content"]
    assert [p["type"] for p in parts] == ["text", "image"]
    assert parts[0]["text"] == "how many shapes are there ?"
    assert isinstance(row["image"], Image.Image) and row["answer"] in answer_vocabulary()


def test_vocabulary_and_corpus_cover_generated_texts():
    vocab, corpus = set(answer_vocabulary()), set(text_corpus())
    assert vocab == {"0", "1", "2", "3", "4", "5", "yes", "no"}
    for ex in _examples(120, seed=4):
        assert ex["answer"] in vocab and ex["answer"] in corpus and ex["question"] in corpus


# ------------------------------------------------------------------------------------ reward


@pytest.mark.parametrize(
    ("completion", "answer", "expected"),
    [
        ("3", "3", 1.0),
        ("<answer>3</answer>", "3", 1.0),
        ("<answer> 3 </answer> extra", "3", 1.0),
        ("thinking ... <answer>\n3\n</answer>", "3", 1.0),
        ([{"role": "assistant", "content": "<answer>3</answer>"}], "3", 1.0),
        ([{"role": "assistant", "content": [{"type": "text", "text": "4"}]}], "4", 1.0),
        ("Yes.", "yes", 1.0),
        ("<answer>YES</answer>", "yes", 1.0),
        (" no ", "no", 1.0),
        ("4", "3", 0.0),
        ("", "3", 0.0),
        ([{"role": "assistant", "content": ""}], "3", 0.0),
        ("<answer>2</answer><answer>3</answer>", "3", 0.0),
        ("<answer>3</answer><answer>2</answer>", "3", 1.0),
        ("the answer is 3", "3", 0.0),
        ("<answer>3", "3", 0.0),
        ("__import__('os')", "3", 0.0),
    ],
)
def test_reward_cases(completion, answer, expected):
    assert synthetic_accuracy_reward([completion], [answer]) == [expected]


def test_reward_batch_and_kwargs():
    out = synthetic_accuracy_reward(["1", "<answer>no</answer>"], ["1", "yes"], prompts=None, question_type=["a", "b"])
    assert out == [1.0, 0.0]


def test_score_by_type():
    scores = score_by_type(
        ["3", "<answer>2</answer>", "yes", "No.", "1"],
        ["3", "4", "yes", "yes", "1"],
        ["count_all", "count_all", "compare_colors", "compare_colors", "count_color"],
    )
    assert scores == {"count_all": 0.5, "compare_colors": 0.5, "count_color": 1.0, "overall": 0.6}


# ------------------------------------------------------------------------------------ splits


def test_make_splits_disjoint():
    dd = make_splits(40, 16, seed=3)
    assert set(dd) == {"train", "test"}
    assert len(dd["train"]) == 40 and len(dd["test"]) == 16
    assert set(dd["train"]["id"]).isdisjoint(dd["test"]["id"])
    train_seeds = {i.split("-")[0] for i in dd["train"]["id"]}
    test_seeds = {i.split("-")[0] for i in dd["test"]["id"]}
    assert len(train_seeds) == len(test_seeds) == 1 and train_seeds != test_seeds
    key = lambda r: (r["image"].convert("RGB").tobytes(), r["prompt"][0]["content"][0]["text"])  # noqa: E731
    assert not {key(r) for r in dd["train"]} & {key(r) for r in dd["test"]}
    assert len(set(dd["train"]["id"])) == 40


def test_make_splits_resamples_collisions():
    # A tiny scene space (one 3x3 square at a fixed place, one question type) forces collisions:
    # every test example must still be absent from train.
    cfg = SyntheticConfig(
        image_size=7, grid=1, min_shapes=1, max_shapes=1, shape_size=(3, 3), margin=1, question_types=("count_all",)
    )
    # 3 shapes x 3 colours x 9 jitter positions = 81 possible images
    dd = make_splits(40, 20, seed=0, config=cfg)
    train_imgs = {r["image"].convert("RGB").tobytes() for r in dd["train"]}
    test_imgs = [r["image"].convert("RGB").tobytes() for r in dd["test"]]
    assert not train_imgs & set(test_imgs)
