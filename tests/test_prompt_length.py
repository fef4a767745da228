"""Prompts are measured with their image tokens before a run: a prompt that would not fit the context stops the
run naming the row and the length it needs; one that fits trains with every image token (TRL never truncates).

The tiny Qwen2.5-VL's image processor is opened up (``size`` = pixel bounds) so that a 448x448 image is
(448 / 28)^2 = 256 image tokens (28 = patch 14 x merge 2), the hand-computed reference of these tests.
"""

from __future__ import annotations

import json

import pytest
import torch
from datasets import Dataset
from PIL import Image

from pepo.data.prompt_length import PromptTooLong, check_prompt_lengths, measure_prompt, model_context
from pepo.models.loading import image_token_id

BIG, SMALL = 448, 112
BIG_TOKENS, SMALL_TOKENS = (BIG // 28) ** 2, 16
QUESTION = "how many red shapes ?"


def _open_up(processor):
    """Let the tiny processor keep a 448x448 image at full size (default: every image becomes 112x112)."""
    processor.image_processor.size = {"shortest_edge": 56 * 56, "longest_edge": 1024 * 1024}
    return processor


def _row(i: int, side: int | None, text: str = QUESTION) -> dict:
    content = [{"type": "text", "text": text}] + ([{"type": "image"}] if side else [])
    return {"id": f"q{i}" if side != BIG else "big", "prompt": [{"role": "user", "content": content}],
            "images": [Image.new("RGB", (side, side), (200, 30, 30))] if side else [], "answer": "3"}


def _text_tokens(processor, row) -> int:
    """Reference: the rendered prompt through the bare tokenizer (each image placeholder is one token)."""
    text = processor.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
    return len(processor.tokenizer(text)["input_ids"])


def test_image_prompt_that_does_not_fit_names_the_row_and_the_length(tiny_vlm):
    model, processor = tiny_vlm
    processor = _open_up(processor)
    token = image_token_id(model, processor)
    rows = [_row(0, SMALL), _row(1, SMALL), _row(2, BIG)]
    total = _text_tokens(processor, rows[2]) - 1 + BIG_TOKENS  # the placeholder becomes 256 image tokens
    assert measure_prompt(processor, rows[2]["prompt"], rows[2]["images"], token) == (total, BIG_TOKENS)
    assert measure_prompt(processor, rows[0]["prompt"], rows[0]["images"], token)[1] == SMALL_TOKENS

    with pytest.raises(PromptTooLong) as err:
        check_prompt_lengths(processor, rows, token, context=total + 5, context_name="vllm_max_model_length",
                             completion_length=6, split="train")
    message = str(err.value)
    assert message.startswith(f"split 'train' row 2 (id 'big'): the prompt is {total} tokens with its image "
                              f"({BIG_TOKENS} image tokens); with max_completion_length=6 it needs {total + 6} tokens")
    assert f"set vllm_max_model_length >= {total + 6}" in message
    assert "lower max_completion_length to <= 5" in message and "shrink the image" in message

    # exactly enough context: passes, and reports the longest prompt
    report = check_prompt_lengths(processor, rows, token, context=total + 6, context_name="vllm_max_model_length",
                                  completion_length=6)
    assert (report.rows, report.longest, report.longest_row, report.longest_image_tokens) == (3, total, 2, BIG_TOKENS)
    # the prompt alone longer than the context: no completion length can help, so that fix is not offered
    with pytest.raises(PromptTooLong) as err:
        check_prompt_lengths(processor, rows, token, context=total - 1, context_name="vllm_max_model_length",
                             completion_length=6)
    assert "lower max_completion_length" not in str(err.value) and f">= {total + 6}" in str(err.value)


def test_text_only_prompt_that_does_not_fit(tiny_vlm):
    model, processor = tiny_vlm
    token = image_token_id(model, processor)
    long_text = " ".join(["count the green triangles in the image ."] * 40)
    rows = Dataset.from_list([_row(0, None, long_text)])
    total = _text_tokens(processor, rows[0])
    assert measure_prompt(processor, rows[0]["prompt"], rows[0]["images"], token) == (total, 0)
    with pytest.raises(PromptTooLong) as err:
        check_prompt_lengths(processor, rows, token, context=total, context_name="the model's max_position_embeddings",
                             completion_length=8)
    message = str(err.value)
    assert f"row 0 (id 'q0'): the prompt is {total} tokens (text only, no image tokens)" in message
    assert f"use a model with a context of >= {total + 8} tokens" in message and "shrink the image" not in message


def test_model_context_reads_the_text_decoder(tiny_vlm):
    model, _ = tiny_vlm
    assert model_context(model.config) == (model.config.text_config.max_position_embeddings,
                                           "the model's max_position_embeddings")
    assert model_context(model.config, 300) == (300, "vllm_max_model_length")


def test_a_prompt_that_fits_trains_with_all_its_image_tokens(tiny_vlm, tmp_path):
    """TRL 1.16 does not truncate prompts: each 256-token image reaches the training forward whole."""
    from pepo.trainer import PEPOTrainer
    from tests.test_trainer import make_config, varied_reward

    model, processor = tiny_vlm
    processor = _open_up(processor)
    rows = Dataset.from_list([_row(i, BIG) | {"id": str(i)} for i in range(8)])
    token = image_token_id(model, processor)
    check_prompt_lengths(processor, rows, token, context=model.config.text_config.max_position_embeddings,
                         context_name="the model's max_position_embeddings", completion_length=6)
    trainer = PEPOTrainer(model=model, reward_funcs=varied_reward, args=make_config(tmp_path, max_steps=1),
                          train_dataset=rows, processing_class=processor)
    seen: list[int] = []
    apply = trainer._apply_token_weights

    def spy(inputs, vision_mask, *args, **kwargs):
        seen.extend(vision_mask.sum(1).tolist())
        return apply(inputs, vision_mask, *args, **kwargs)

    trainer._apply_token_weights = spy
    trainer.train()
    assert seen == [BIG_TOKENS] * 8


def _checkpoint_and_data(tiny_vlm, tmp_path, max_positions: int):
    """A saved tiny checkpoint whose context is ``max_positions`` and a JSONL dataset whose row 'q2' has a big image."""
    model, processor = tiny_vlm
    processor = _open_up(processor)
    model.config.text_config.max_position_embeddings = max_positions
    ckpt = tmp_path / "ckpt"
    model.save_pretrained(ckpt)
    processor.save_pretrained(ckpt)
    (tmp_path / "data").mkdir()
    lines = []
    for i in range(4):
        Image.new("RGB", (BIG if i == 2 else SMALL,) * 2, "red").save(tmp_path / "data" / f"{i}.png")
        lines.append(json.dumps({"id": f"q{i}", "image": f"{i}.png", "question": QUESTION, "answer": "3"}))
    (tmp_path / "data" / "train.jsonl").write_text("\n".join(lines))
    return ckpt, tmp_path / "data" / "train.jsonl"


@pytest.mark.parametrize("dry_run", ["true", "false"])
def test_pepo_train_stops_before_training_naming_the_row(tiny_vlm, tmp_path, capsys, dry_run):
    from pepo.cli import main

    ckpt, data = _checkpoint_and_data(tiny_vlm, tmp_path, max_positions=200)
    code = main(["train", "--model_name_or_path", str(ckpt), "--dataset", str(data), "--test_split", "none",
                 "--reward_funcs", "accuracy", "--warm_start", "false", "--per_device_train_batch_size", "4",
                 "--num_generations", "4", "--max_completion_length", "6", "--max_steps", "1", "--report_to", "none",
                 "--save_strategy", "no", "--output_dir", str(tmp_path / "run"), "--dry_run", dry_run])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "split 'train' row 2 (id 'q2'): the prompt is" in err and f"({BIG_TOKENS} image tokens)" in err
    assert "the model's max_position_embeddings is 200" in err
    assert not (tmp_path / "run" / "checkpoint").exists()


def test_qwen_count_from_image_sizes_equals_the_processor(tiny_vlm):
    """The Qwen2-VL-family fast path (no pixel work) gives the full processor's counts, image by image."""
    model, processor = tiny_vlm
    processor = _open_up(processor)
    token = image_token_id(model, processor)
    cases = [[(448, 448)], [(300, 200)], [(1000, 37)], [(57, 29)], [(448, 448), (120, 500)], []]
    for sizes in cases:
        content = [{"type": "text", "text": QUESTION}] + [{"type": "image"}] * len(sizes)
        prompt = [{"role": "user", "content": content}]
        images = [Image.new("RGB", size, "blue") for size in sizes]
        fast = measure_prompt(processor, prompt, images, token)
        full = measure_prompt(processor, prompt, images, token, from_pixels=True)
        assert fast == full, (sizes, fast, full)
    # the hand count of one case: 448x448 -> (448 / 28)^2 image tokens
    assert measure_prompt(processor, [_row(0, BIG)["prompt"][0]], _row(0, BIG)["images"], token)[1] == BIG_TOKENS



@pytest.mark.parametrize("command", ["eval", "analyze"])
def test_pepo_eval_and_analyze_stop_before_generating_naming_the_prompt(tiny_vlm, tmp_path, capsys, command):
    from pepo.cli import main

    # geometry3k's prompt carries its ~200-token instruction: the small images fit 300 positions, the big one not
    ckpt, data = _checkpoint_and_data(tiny_vlm, tmp_path, max_positions=300)
    task = ["--task", "geometry3k", "--dataset", str(data), "--split", "train", "--image_root", str(data.parent),
            "--image_column", "image", "--question_column", "question", "--answer_column", "answer",
            "--max_new_tokens", "3"]
    argv = ["eval", "--model", str(ckpt), *task, "--reward", "exact_match", "--output_dir", str(tmp_path / "out")] \
        if command == "eval" else ["analyze", "tokens", "--model", str(ckpt), *task, "--out", str(tmp_path / "out")]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "row 2 (id 'q2'): the prompt is" in err and f"({BIG_TOKENS} image tokens); with --max_new_tokens=3" in err
    assert "the model's max_position_embeddings is 300" in err
    assert not (tmp_path / "out" / "samples.jsonl").exists()
