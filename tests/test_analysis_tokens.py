"""The numbers behind `pepo analyze tokens`: per-token similarity, entropy, weight and hidden-state shift."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import make_rl_rows
from pepo.analysis.shift import ShiftAnalysis
from pepo.analysis.tokens import TokenAnalysisSettings, generate_completion_ids, score_completions
from pepo.eval.generation import encode_prompts
from pepo.models.loading import image_token_id
from pepo.weights import pepo_token_weights, token_entropy, visual_similarity


def _reference(model, processor, row, completion_ids, temperature, alpha, tau):
    """One response alone (no padding), through output_hidden_states and pepo.weights."""
    batch = encode_prompts(processor, [row["prompt"]], [row["images"]])
    ids = torch.cat([batch["input_ids"], torch.tensor([completion_ids])], dim=1)
    inputs = {k: v for k, v in batch.items()}
    inputs["input_ids"] = ids
    inputs["attention_mask"] = torch.ones_like(ids)
    if "mm_token_type_ids" in inputs:
        inputs["mm_token_type_ids"] = torch.cat(
            [inputs["mm_token_type_ids"], torch.zeros(1, len(completion_ids), dtype=torch.long)], dim=1)
    c = len(completion_ids)
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
    vision_mask = ids == image_token_id(model, processor)
    sim = visual_similarity(out.hidden_states, vision_mask, c)
    ent = token_entropy(out.logits[:, -c - 1 : -1] / temperature)
    weight = pepo_token_weights(sim, ent, torch.ones(1, c, dtype=torch.bool), alpha, tau)
    return sim[0], ent[0], weight[0]


def test_scores_equal_pepo_weights_on_each_unpadded_response(tiny_vlm):
    model, processor = tiny_vlm
    rows = make_rl_rows(3)
    settings = TokenAnalysisSettings(max_new_tokens=10, num_samples=1, temperature=0.7, gate_alpha=0.3,
                                     gate_temperature=0.5, shift="none")
    # completions of different lengths: the batch pads them; each must still match its own reference
    completions = [[15, 16, 17, 18, 19, 20, 21], [30, 31], [40, 41, 42, 43]]
    scored = score_completions(model, processor, rows["prompt"], rows["images"], completions, settings,
                               image_token_id(model, processor))
    for i, result in enumerate(scored):
        sim, ent, weight = _reference(model, processor, rows[i], completions[i], 0.7, 0.3, 0.5)
        torch.testing.assert_close(torch.tensor(result["similarity"]), sim, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(torch.tensor(result["entropy"]), ent, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(torch.tensor(result["weight"]), weight, atol=1e-5, rtol=1e-5)
        assert math.isclose(sum(result["weight"]), len(completions[i]), rel_tol=1e-5)
        assert result["layer_shift"] is None


def test_shift_is_zero_when_the_image_is_unchanged_and_positive_when_blanked(tiny_vlm):
    model, processor = tiny_vlm
    rows = make_rl_rows(2)
    settings = TokenAnalysisSettings(shift="blank")
    completions = [[15, 16, 17], [30, 31, 32, 33, 34]]
    token = image_token_id(model, processor)
    same = score_completions(model, processor, rows["prompt"], rows["images"], completions, settings, token,
                             counterfactual=lambda image: image)
    blank = score_completions(model, processor, rows["prompt"], rows["images"], completions, settings, token)
    n_states = model.config.text_config.num_hidden_layers + 1
    for a, b, ids in zip(same, blank, completions):
        assert a["layer_shift"].shape == b["layer_shift"].shape == (n_states, len(ids))
        assert a["layer_shift"].abs().max() < 1e-5
        # hidden state 0 is the token embedding: it cannot depend on the image
        assert b["layer_shift"][0].abs().max() < 1e-6
        assert b["layer_shift"][1:].min() > 1e-5
        # the counterfactual copy rides along in the same forward without changing the scores
        torch.testing.assert_close(torch.tensor(a["weight"]), torch.tensor(b["weight"]))


def test_removed_image_aligns_completions_and_keeps_scores(tiny_vlm):
    model, processor = tiny_vlm
    rows = make_rl_rows(2)
    token = image_token_id(model, processor)
    completions = [[15, 16, 17], [30, 31]]
    removed = score_completions(model, processor, rows["prompt"], rows["images"], completions,
                                TokenAnalysisSettings(shift="remove"), token)
    plain = score_completions(model, processor, rows["prompt"], rows["images"], completions,
                              TokenAnalysisSettings(shift="none"), token)
    for r, p in zip(removed, plain):
        torch.testing.assert_close(torch.tensor(r["similarity"]), torch.tensor(p["similarity"]), atol=1e-5, rtol=1e-5)
        assert r["layer_shift"][0].abs().max() < 1e-6 and r["layer_shift"][1:].mean() > 1e-3


def test_generated_ids_stop_after_the_first_eos_and_are_seeded(tiny_vlm):
    model, processor = tiny_vlm
    rows = make_rl_rows(2)
    settings = TokenAnalysisSettings(max_new_tokens=6, num_samples=3)
    torch.manual_seed(3)
    first = generate_completion_ids(model, processor, rows["prompt"], rows["images"], settings)
    torch.manual_seed(3)
    second = generate_completion_ids(model, processor, rows["prompt"], rows["images"], settings)
    assert first == second and len(first) == 6
    eos = processor.tokenizer.eos_token_id
    for ids in first:
        assert 1 <= len(ids) <= 6
        assert eos not in ids[:-1]  # nothing after the first end-of-sequence token
        assert processor.tokenizer.pad_token_id not in ids or processor.tokenizer.pad_token_id == eos


def test_settings_errors_name_the_field():
    with pytest.raises(ValueError, match="shift"):
        TokenAnalysisSettings(shift="erase")
    with pytest.raises(ValueError, match="batch_size"):
        TokenAnalysisSettings(batch_size=0)
    with pytest.raises(ValueError, match="score_type"):
        TokenAnalysisSettings(score_type="cos")
    with pytest.raises(ValueError, match="gate_temperature"):
        TokenAnalysisSettings(gate_temperature=0)


def test_shift_analysis_groups_and_correlation_against_literal_values():
    analysis = ShiftAnalysis(quantile=0.25)
    # 4 tokens -> k = 1 per group: low = the 0.1 token, high = the 0.4 token
    analysis.add([0.4, 0.1, 0.3, 0.2], torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.8, 0.2, 0.5, 0.3]]))
    analysis.add([0.9, 0.5], torch.tensor([[0.0, 0.0], [0.6, 0.4]]))  # k = 1 (floor 0.5 -> 1)
    s = analysis.summary()
    assert s["tokens"] == 6 and s["tokens_high"] == 2 and s["tokens_low"] == 2
    assert s["per_layer_shift_high"] == pytest.approx([0.0, (0.8 + 0.6) / 2])
    assert s["per_layer_shift_low"] == pytest.approx([0.0, (0.2 + 0.4) / 2])
    assert s["mean_shift_high"] == pytest.approx(0.35) and s["mean_shift_low"] == pytest.approx(0.15)
    assert s["ratio_high_to_low"] == pytest.approx(0.35 / 0.15)
    xs = [0.4, 0.1, 0.3, 0.2, 0.9, 0.5]
    ys = [0.4, 0.1, 0.25, 0.15, 0.3, 0.2]  # mean over the two hidden states
    import numpy as np

    assert s["pearson_similarity_shift"] == pytest.approx(float(np.corrcoef(xs, ys)[0, 1]), abs=1e-6)  # inputs are float32


def test_shift_analysis_reservoir_is_bounded_and_bad_shapes_fail(tmp_path):
    analysis = ShiftAnalysis(max_points=50)
    generator = torch.Generator().manual_seed(0)
    for _ in range(40):
        sim = torch.rand(20, generator=generator)
        analysis.add(sim.tolist(), torch.stack([torch.zeros(20), sim * 0.5]))
    assert len(analysis._points) == 50 and analysis.summary()["tokens"] == 800
    assert analysis.summary()["pearson_similarity_shift"] == pytest.approx(1.0)
    summary = analysis.write(tmp_path, {"model": "m", "task": "t"})
    assert (tmp_path / "hidden_state_shift.png").stat().st_size > 10_000
    assert summary["mean_shift_high"] > summary["mean_shift_low"]
    with pytest.raises(ValueError, match="layer_shift"):
        analysis.add([0.1, 0.2], torch.zeros(3, 5))
