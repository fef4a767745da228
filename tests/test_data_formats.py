"""Real dataset formats, written locally by the tests: the paper release's Geometry3K JSONL form."""

from __future__ import annotations

import json
from argparse import Namespace

import pytest
from PIL import Image

from pepo.data.loading import DataError, load_rl_data


def _release_geometry3k(root, n=3):
    """{"images": ["Geometry3K/train/<id>/img_diagram.png"], "messages": [user "<image>\\n<problem>\\n\\n<instr>"],
    "solution": ...}: the release's local form, image paths relative to a root folder."""
    rows = []
    for i in range(n):
        rel = f"Geometry3K/train/{i}/img_diagram.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (64, 48), (255, 255, 255)).save(root / rel)
        rows.append({"images": [rel], "solution": ["\\frac { 3 } { 7 }", "5 \\sqrt { 3 }", "60"][i % 3],
                     "messages": [{"role": "user", "content": f"<image>\nFind x in triangle {i}.\n\nThink step by step."}]})
    path = root / "geometry3k_train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def _args(path, root, **kw):
    values = dict(dataset=str(path), dataset_config=None, train_split="train", test_split="none",
                  image_column="images", question_column="messages", answer_column="solution", image_root=str(root),
                  num_test=0, skip_invalid_rows=False, prompt_instruction=None)
    values.update(kw)
    return Namespace(**values)


def test_release_jsonl_form_loads_with_relative_paths(tmp_path):
    path = _release_geometry3k(tmp_path)
    data, skipped = load_rl_data(_args(path, tmp_path))
    rows = data["train"]
    assert len(rows) == 3 and skipped == {"train": 0}
    assert rows[0]["prompt"][0]["content"][0]["text"] == "Find x in triangle 0.\n\nThink step by step."
    assert rows[0]["prompt"][0]["content"][1]["type"] == "image"
    assert rows[1]["answer"] == "5 \\sqrt { 3 }"
    assert rows[2]["images"][0].size == (64, 48)


def test_release_jsonl_form_without_root_names_the_fix(tmp_path):
    path = _release_geometry3k(tmp_path)
    elsewhere = tmp_path / "other"
    elsewhere.mkdir()
    with pytest.raises(DataError, match=r"row 0 .*field 'images'.*does not exist \(set --image_root"):
        load_rl_data(_args(path, elsewhere))
