"""Dataset adapters (grounding, classification, multiple choice) on tiny local files written here."""

from __future__ import annotations

import json
from argparse import Namespace
from collections import Counter

import pytest
from datasets import ClassLabel, Dataset, Features, Sequence, Value
from PIL import Image

from pepo.data.adapters import (
    class_names_of,
    smart_resize,
    to_classification_rows,
    to_grounding_rows,
    to_multiple_choice_rows,
)
from pepo.data.loading import DataError, load_rl_data


def _args(dataset, **overrides):
    values = dict(
        dataset=str(dataset), dataset_config=None, train_split="train", test_split="none", image_column="image",
        question_column="question", answer_column="answer", image_root=None, num_test=0, skip_invalid_rows=False,
        prompt_instruction=None, dataset_format="generic", box_convention="absolute_resized", min_pixels=3136,
        max_pixels=12845056, k_shot=None, classification_show_options=False, options_column="options",
    )
    values.update(overrides)
    return Namespace(**values)


@pytest.fixture()
def photo(tmp_path):
    Image.new("RGB", (640, 480), (120, 30, 200)).save(tmp_path / "photo.png")
    return tmp_path


# ------------------------------------------------------------------------------------------- grounding


def test_smart_resize_matches_hand_computed_sizes():
    # 640/28 = 22.86 -> 23*28 = 644; 480/28 = 17.14 -> 17*28 = 476; 644*476 = 306544 within the bounds
    assert smart_resize(480, 640) == (476, 644)
    # too small: 28*28 < 3136, so scale by sqrt(3136/400) = 2.8: 20*2.8/28 = 2 -> 56
    assert smart_resize(20, 20) == (56, 56)
    # too large for max_pixels 100000: beta = sqrt(307200/100000) = 1.7527; 480/beta/28 = 9.78 -> 9*28 = 252,
    # 640/beta/28 = 13.04 -> 13*28 = 364
    assert smart_resize(480, 640, max_pixels=100_000) == (252, 364)


@pytest.mark.parametrize(
    "convention, box, size",
    [
        # x scale 644/640 = 1.00625, y scale 476/480 = 0.991666...
        ("absolute_resized", [64.4, 47.6, 322.0, 238.0], [644, 476]),
        ("absolute_original", [64.0, 48.0, 320.0, 240.0], [640, 480]),
        ("relative_1000", [100.0, 100.0, 500.0, 500.0], [1000, 1000]),
    ],
)
def test_grounding_box_is_rescaled_to_the_convention(photo, convention, box, size):
    data = Dataset.from_dict({"image": ["photo.png"], "question": ["the purple square"],
                              "answer": [[64, 48, 320, 240]]})
    rows, skipped = to_grounding_rows(data, "train", image_root=str(photo), box_convention=convention)
    assert skipped == 0
    row = rows[0]
    assert json.loads(row["answer"]) == pytest.approx(box)
    assert row["image_size"] == size
    text = row["prompt"][0]["content"][0]["text"]
    assert '"the purple square"' in text and "[x1, y1, x2, y2]" in text and "<answer>" in text
    assert ("0-1000" in text) == (convention == "relative_1000")
    assert [p["type"] for p in row["prompt"][0]["content"]] == ["text", "image"]


def test_grounding_rows_score_with_the_iou_reward(photo):
    from pepo.rewards import REWARDS

    data = Dataset.from_dict({"image": ["photo.png"], "question": ["it"], "answer": ["[64, 48, 320, 240]"]})
    rows, _ = to_grounding_rows(data, "train", image_root=str(photo))
    good = "<think>there</think><answer>[64.4, 47.6, 322.0, 238.0]</answer>"
    whole = "<think>all</think><answer>[0, 0, 644, 476]</answer>"
    scores = REWARDS["iou"]([good, whole], answer=[rows[0]["answer"]] * 2, image_size=[rows[0]["image_size"]] * 2)
    assert scores == pytest.approx([1.0, 0.0])


BAD_BOXES = [
    "[1, 2, 3]",  # 3 numbers
    "[0, 0, NaN, 5]",  # not finite
    "[50, 50, 10, 10]",  # inverted
    "[10, 10, 10, 20]",  # zero width
    "[0, 0, 700, 100]",  # outside the 640x480 image
    "not a box",
    '[0, "a", 3, 4]',
]


def test_malformed_boxes_are_rejected_naming_row_and_field(photo):
    for bad in BAD_BOXES:
        data = Dataset.from_dict({"image": ["photo.png"] * 2, "question": ["a", "b"],
                                  "bbox": ["[1, 1, 20, 20]", bad]})
        with pytest.raises(DataError, match=r"row 1 .*field 'bbox'"):
            to_grounding_rows(data, "train", answer_column="bbox", image_root=str(photo))


def test_malformed_boxes_are_skipped_and_counted(photo):
    boxes = ["[1, 1, 20, 20]", *BAD_BOXES, "[-0.5, 0, 640.8, 480]"]  # the last is within the 1-pixel tolerance
    data = Dataset.from_dict({"image": ["photo.png"] * len(boxes), "question": ["q"] * len(boxes), "bbox": boxes})
    rows, skipped = to_grounding_rows(data, "train", answer_column="bbox", image_root=str(photo),
                                      skip_invalid_rows=True, box_convention="absolute_original")
    assert skipped == len(BAD_BOXES)
    assert len(rows) == 2
    assert json.loads(rows[1]["answer"]) == [0.0, 0.0, 640.0, 480.0]  # clipped to the image


def test_load_rl_data_dispatches_to_the_grounding_adapter(photo):
    (photo / "train.jsonl").write_text(
        json.dumps({"image": "photo.png", "question": "the square", "answer": [64, 48, 320, 240]}) + "\n"
    )
    data, skipped = load_rl_data(_args(photo / "train.jsonl", image_root=str(photo), dataset_format="grounding",
                                       prompt_instruction="Think first."))
    assert skipped == {"train": 0}
    row = data["train"][0]
    assert json.loads(row["answer"]) == pytest.approx([64.4, 47.6, 322.0, 238.0])
    assert row["prompt"][0]["content"][0]["text"].endswith("\n\nThink first.")


# ------------------------------------------------------------------------------------------- classification


def _image_folder(root, counts):
    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (32, 24), (i * 20 % 255, 80, 160)).save(root / name / f"{i:02d}.png")
    return root


def test_k_shot_is_deterministic_and_balanced(tmp_path):
    root = _image_folder(tmp_path / "flowers", {"daisy": 6, "rose": 5, "bird of paradise": 7})

    def ids(seed, k=2):
        data, _ = load_rl_data(_args(root, dataset_format="classification", answer_column="label", k_shot=k),
                               seed=seed)
        return data["train"]

    first, again = ids(0), ids(0)
    assert first["id"] == again["id"]
    assert Counter(first["answer"]) == {"daisy": 2, "rose": 2, "bird of paradise": 2}
    assert all(i.startswith(f"{a}/") for i, a in zip(first["id"], first["answer"]))
    assert any(ids(seed)["id"] != first["id"] for seed in range(1, 6))
    assert Counter(ids(3, k=5)["answer"]) == {"daisy": 5, "rose": 5, "bird of paradise": 5}
    text = first[0]["prompt"][0]["content"][0]["text"]
    assert "<answer>" in text and "daisy" not in text  # classes are not listed by default


def test_without_k_shot_every_image_is_used_and_options_can_be_listed(tmp_path):
    root = _image_folder(tmp_path / "data", {"A320": 2, "Boeing 737-200": 3})
    data, _ = load_rl_data(_args(root, dataset_format="classification", answer_column="label",
                                 classification_show_options=True))
    assert sorted(data["train"]["answer"]) == ["A320", "A320"] + ["Boeing 737-200"] * 3
    assert "Choose one of: A320, Boeing 737-200." in data["train"][0]["prompt"][0]["content"][0]["text"]


def test_image_folder_with_split_subfolders(tmp_path):
    _image_folder(tmp_path / "d" / "train", {"cat": 3, "dog": 3})
    _image_folder(tmp_path / "d" / "test", {"cat": 1, "dog": 2})
    data, _ = load_rl_data(_args(tmp_path / "d", dataset_format="classification", answer_column="label",
                                 test_split="test", k_shot=1))
    assert Counter(data["train"]["answer"]) == {"cat": 1, "dog": 1}
    assert Counter(data["test"]["answer"]) == {"cat": 1, "dog": 2}  # k-shot samples the train split only


def test_a_folder_of_data_files_is_a_dataset_not_an_image_folder(tmp_path):
    root = tmp_path / "hub_like"
    _image_folder(root / "images", {"rose": 1, "tulip": 1})  # would look like root/<split>/<class>/ on its own
    Dataset.from_dict({"image": ["images/rose/00.png", "images/tulip/00.png"], "name": ["rose", "tulip"]}
                      ).to_parquet(root / "train.parquet")
    data, _ = load_rl_data(_args(root, dataset_format="classification", answer_column="name", image_root=str(root)))
    assert data["train"]["answer"] == ["rose", "tulip"]


def test_a_class_with_too_few_images_is_named(tmp_path):
    root = _image_folder(tmp_path / "planes", {"A320": 4, "Cessna 172": 1})
    with pytest.raises(DataError, match=r"class 'Cessna 172' has 1 image\(s\), fewer than k_shot=2"):
        load_rl_data(_args(root, dataset_format="classification", answer_column="label", k_shot=2))


def test_classification_from_label_columns(photo):
    names = ["rose", "tulip"]
    with_ids = Dataset.from_dict({"image": ["photo.png"] * 3, "label": [1, 0, 1]},
                                 features=Features({"image": Value("string"), "label": ClassLabel(names=names)}))
    assert class_names_of(with_ids, "label") == names
    rows, _ = to_classification_rows(with_ids, "train", names, label_column="label", image_root=str(photo))
    assert rows["answer"] == ["tulip", "rose", "tulip"]
    as_text = Dataset.from_dict({"image": ["photo.png"] * 2, "label": ["tulip", "lily"]})
    assert class_names_of(as_text, "label") == ["lily", "tulip"]
    with pytest.raises(DataError, match=r"row 1 .*field 'label'.*'lily'"):
        to_classification_rows(as_text, "test", names, label_column="label", image_root=str(photo))


# ------------------------------------------------------------------------------------------- multiple choice


def _puzzles(answers, options=None):
    n = len(answers)
    options = options or [["red", "green", "blue"]] * n
    return Dataset.from_dict({"image": ["photo.png"] * n, "question": ["Which colour is missing?"] * n,
                              "options": options, "answer": answers})


def test_multiple_choice_answers_become_letters(photo):
    rows, skipped = to_multiple_choice_rows(_puzzles(["green", "(C)", "a", "Blue"]), "train", image_root=str(photo))
    assert skipped == 0
    assert rows["answer"] == ["B", "C", "A", "C"]
    assert rows[0]["choices"] == ["red", "green", "blue"]
    assert "options" not in rows.column_names
    text = rows[0]["prompt"][0]["content"][0]["text"]
    assert "Which colour is missing?\n\nOptions:\n(A) red\n(B) green\n(C) blue" in text


def test_multiple_choice_rows_score_with_the_choice_reward(photo):
    from pepo.rewards import REWARDS

    rows, _ = to_multiple_choice_rows(_puzzles(["green"]), "train", image_root=str(photo))
    completions = ["<think>x</think><answer>B</answer>", "<think>x</think><answer>green</answer>",
                   "<think>x</think><answer>(A)</answer>"]
    scores = REWARDS["choice"](completions, answer=[rows[0]["answer"]] * 3, choices=[rows[0]["choices"]] * 3)
    assert scores == [1.0, 1.0, 0.0]


def test_multiple_choice_validation(photo):
    with pytest.raises(DataError, match=r"row 1 .*field 'answer'.*'purple' is not among the options"):
        to_multiple_choice_rows(_puzzles(["red", "purple"]), "train", image_root=str(photo))
    with pytest.raises(DataError, match=r"row 0 .*field 'answer'.*'D' is not among"):
        to_multiple_choice_rows(_puzzles(["D"]), "train", image_root=str(photo))
    with pytest.raises(DataError, match=r"row 0 .*field 'options'.*at least 2"):
        to_multiple_choice_rows(_puzzles(["red"], [["red"]]), "train", image_root=str(photo))
    rows, skipped = to_multiple_choice_rows(
        _puzzles(["red", "purple", "red"], [["red", "blue"], ["red", "blue"], ["red"]]), "train",
        image_root=str(photo), skip_invalid_rows=True,
    )
    assert (len(rows), skipped) == (1, 2)


def test_multiple_choice_through_load_rl_data_with_a_custom_options_column(photo):
    Dataset.from_dict({"image": ["photo.png"], "question": ["How many?"], "candidates": [["3", "4"]],
                       "answer": ["4"]}, features=Features({
                           "image": Value("string"), "question": Value("string"),
                           "candidates": Sequence(Value("string")), "answer": Value("string")}),
                      ).to_parquet(photo / "train.parquet")
    data, _ = load_rl_data(_args(photo / "train.parquet", image_root=str(photo), dataset_format="multiple_choice",
                                 options_column="candidates"))
    assert data["train"][0]["answer"] == "B" and data["train"][0]["choices"] == ["3", "4"]


# ------------------------------------------------------------------------------------------- configuration


def test_unknown_dataset_format_is_rejected_naming_the_choices(photo):
    from pepo.config import ConfigError, parse_train_args

    with pytest.raises(ConfigError, match=r"dataset_format.*'bounding'.*'generic', 'grounding', 'classification'"):
        parse_train_args(["--dataset_format", "bounding"])
    with pytest.raises(ConfigError, match=r"box_convention.*'absolute_resized'"):
        parse_train_args(["--box_convention", "xywh"])
    with pytest.raises(ValueError, match=r"dataset_format.*multiple_choice"):
        load_rl_data(_args(photo / "x.jsonl", dataset_format="vqa"))
    script_args, _ = parse_train_args(["--dataset_format", "classification", "--k_shot", "4"])
    assert (script_args.dataset_format, script_args.k_shot) == ("classification", 4)


@pytest.mark.parametrize(
    "polygon",
    [
        [[64, 120], [320, 48], [200, 240], [100, 200]],  # one polygon
        [[[64, 48], [100, 60], [90, 100]], [[300, 200], [320, 240], [310, 230]]],  # two parts of one object
    ],
)
def test_lisa_style_polygons_become_their_bounding_box(photo, polygon):
    data = Dataset.from_dict({"image": ["photo.png"], "question": ["the thing"], "answer": [json.dumps(polygon)]})
    rows, _ = to_grounding_rows(data, "train", image_root=str(photo), box_convention="absolute_original")
    assert json.loads(rows[0]["answer"]) == [64.0, 48.0, 320.0, 240.0]


def test_degenerate_polygon_is_rejected(photo):
    data = Dataset.from_dict({"image": ["photo.png"], "question": ["a line"],
                              "answer": [json.dumps([[10, 10], [20, 10], [30, 10]])]})
    with pytest.raises(DataError, match="empty or inverted"):
        to_grounding_rows(data, "train", image_root=str(photo))
