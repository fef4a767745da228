"""The forward hooks see exactly transformers' hidden states and reduce them like pepo.weights."""

from __future__ import annotations

import pytest
import torch

from pepo.eval.generation import encode_prompts
from pepo.hooks import VisualScoreCapture, find_text_decoder
from pepo.models.loading import image_token_id
from pepo.weights import visual_similarity


def _batch(processor, rows, completions):
    return encode_prompts(processor, rows["prompt"], rows["images"], completions)


@pytest.mark.parametrize("score_type", ["cosine", "dot", "l2", "l1"])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_hook_scores_equal_output_hidden_states(tiny_vlm, rl_rows, score_type, checkpointing):
    model, processor = tiny_vlm
    rows = rl_rows.select(range(4))
    batch = _batch(processor, rows, ["<answer>1</answer><|im_end|>", "<answer>22</answer>", "no", "<answer>3"])
    inputs = {k: v for k, v in batch.items() if k != "prompt_lengths"}
    vision_mask = inputs["input_ids"] == image_token_id(model, processor)
    assert vision_mask.sum(1).tolist() == [16] * 4
    completion_length = 7
    with torch.no_grad():
        reference = visual_similarity(
            model(**inputs, output_hidden_states=True).hidden_states, vision_mask, completion_length, score_type
        )
    if checkpointing:
        model.gradient_checkpointing_enable()
        model.train()
    capture = VisualScoreCapture(model, score_type)
    with capture.record(vision_mask, completion_length):
        out = model(**inputs)
    if checkpointing:
        out.logits.sum().backward()  # recomputation in backward must not disturb the captured scores
    assert capture.num_hidden_states == model.config.text_config.num_hidden_layers + 1
    torch.testing.assert_close(capture.scores, reference, atol=1e-5, rtol=1e-5)


def test_hook_layer_subset_and_chunked_forwards(tiny_vlm, rl_rows):
    model, processor = tiny_vlm
    rows = rl_rows.select(range(4))
    batch = _batch(processor, rows, ["a", "b", "c", "d"])
    inputs = {k: v for k, v in batch.items() if k != "prompt_lengths"}
    vision_mask = inputs["input_ids"] == image_token_id(model, processor)
    with torch.no_grad():
        hidden = model(**inputs, output_hidden_states=True).hidden_states
    reference = visual_similarity(hidden, vision_mask, 3, "cosine", layers=[0, -1])
    capture = VisualScoreCapture(model, "cosine", layers=[0, -1])
    # Two forwards over consecutive halves, as TRL does when it chunks a batch.
    with torch.no_grad(), capture.record(vision_mask, 3):
        for half in (slice(0, 2), slice(2, 4)):
            model(
                input_ids=inputs["input_ids"][half], attention_mask=inputs["attention_mask"][half],
                pixel_values=inputs["pixel_values"][half.start * 64 : half.stop * 64],
                image_grid_thw=inputs["image_grid_thw"][half],
                mm_token_type_ids=inputs["mm_token_type_ids"][half] if "mm_token_type_ids" in inputs else None,
            )
    torch.testing.assert_close(capture.scores, reference, atol=1e-5, rtol=1e-5)


def test_hooks_are_removed_after_record(tiny_vlm, rl_rows):
    model, processor = tiny_vlm
    layers, norm = find_text_decoder(model)
    capture = VisualScoreCapture(model)
    mask = torch.zeros(1, 5, dtype=torch.bool)
    with pytest.raises(RuntimeError, match="captured hidden states for 0 rows"):
        with capture.record(mask, 2):
            pass  # no forward ran: the capture says so instead of returning zeros
    assert all(not layer._forward_pre_hooks for layer in layers) and not norm._forward_hooks


def test_bad_layer_index_names_the_option(tiny_vlm):
    model, _ = tiny_vlm
    with pytest.raises(ValueError, match="vision_layers"):
        VisualScoreCapture(model, layers=[99])


def test_find_text_decoder_rejects_non_decoder():
    with pytest.raises(ValueError, match="text decoder"):
        find_text_decoder(torch.nn.Linear(2, 2))
