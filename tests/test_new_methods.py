"""VGPO (`vgpo`) and Clip-Cov (`clip_cov`): every quantity against a float64 loop written from the public code
(wzb-bupt/VGPO `dp_actor.py` / `core_algos.py`, PRIME-RL Entropy-Mechanism-of-RL `core_algos.py`), the trained
gradient against GRPO's with those loop advantages, the options' errors, and both methods through `pepo demo`."""

from __future__ import annotations

import json
import math

import pytest
import torch

from pepo.eval.generation import encode_prompts
from pepo.hooks import VisualScoreCapture
from pepo.methods import LossContext, get_method
from pepo.methods.clip_cov import ClipCov
from pepo.models.loading import image_token_id
from pepo.weights import layer_similarity
from tests.test_trainer import _loss_and_grads, _max_diff, _prepared_batch, make_config, make_trainer

# --- float64 loops of the public code ----------------------------------------------------------------------------


def ref_cosine_to_mean(hidden, vision_mask, completion_length):
    """VGPO's `_compute_visual_attention_weights`: cos(h_t, mean of the image tokens' h), per row, 0 without image."""
    batch, seq, _ = hidden.shape
    out = torch.zeros(batch, completion_length, dtype=torch.float64)
    for b in range(batch):
        images = [hidden[b, j].double() for j in range(seq) if vision_mask[b, j]]
        if not images:
            continue
        proto = sum(images) / len(images)
        for t in range(completion_length):
            h = hidden[b, seq - completion_length + t].double()
            out[b, t] = float(h @ proto) / max(float(h.norm()) * float(proto.norm()), 1e-30)
    return out


def ref_vgpo(scores, mask, has_image, beta, gamma, kappa, group, intra_clamp=(0.1, 2.0), inter_clamp=(0.9, 2.0)):
    """The public update_policy for one micro-batch (padding-free path), as nested Python loops on floats."""
    rows, cols = len(scores), len(scores[0])
    valid = [[bool(mask[b][t]) for t in range(cols)] for b in range(rows)]
    # similarities: padding positions have zero hidden states (cosine 0), rows without image are all 0
    sim = [[scores[b][t] if (has_image[b] and valid[b][t]) else 0.0 for t in range(cols)] for b in range(rows)]
    # every public response is padded to max_response_length (2048): a zero cell is always in the range
    flat = [x for row in sim for x in row] + [0.0]
    lo, hi = min(flat), max(flat)
    w = [[(x - lo) / (hi - lo + 1e-8) if valid[b][t] else 0.0 for t, x in enumerate(row)] for b, row in enumerate(sim)]
    comp = [[0.0] * cols for _ in range(rows)]
    gate = [[0.0] * cols for _ in range(rows)]
    for b in range(rows):
        positions = [t for t in range(cols) if valid[b][t]]
        if not positions:
            continue
        first, last = min(positions), max(positions)
        for t in positions:
            comp[b][t] = beta * ((t - first) / (last - first + 1e-8) - 0.0) / (1.0 - 0.0 + 1e-8)
        weights = [w[b][t] for t in positions]
        start = int(len(weights) * gamma)
        tail = weights[start:]
        if tail:
            k = max(1, int(len(tail) * kappa))
            threshold = sorted(tail, reverse=True)[k - 1]
            for j, t in enumerate(positions[start:]):
                gate[b][t] = 1.0 if tail[j] >= threshold else 0.0
    intra = [[w[b][t] * (1.0 + gate[b][t] * comp[b][t]) for t in range(cols)] for b in range(rows)]
    w_hat = [[0.0] * cols for _ in range(rows)]
    psi = [[1.0] * cols for _ in range(rows)]
    for b in range(rows):
        values = [intra[b][t] for t in range(cols) if valid[b][t]]
        if not has_image[b]:  # pepo's documented difference: an image-less row is uniform (psi 1, phi 0)
            gate[b] = [0.0] * cols
            continue
        if not values:
            continue
        vmin, vmax = min(values), max(values)
        for t in range(cols):
            if valid[b][t]:
                w_hat[b][t] = (intra[b][t] - vmin) / (vmax - vmin + 1e-8)
        mean = sum(w_hat[b][t] for t in range(cols) if valid[b][t]) / len(values)
        for t in range(cols):
            if valid[b][t]:
                psi[b][t] = min(intra_clamp[1], max(intra_clamp[0], 1.0 + w_hat[b][t] - mean))
    phi = [sum(w_hat[b][t] for t in range(cols) if valid[b][t]) for b in range(rows)]

    def factors(values):
        vmin, vmax = min(values), max(values)
        norm = [(v - vmin) / (vmax - vmin + 1e-8) for v in values]
        mean = sum(norm) / len(norm)
        return [min(inter_clamp[1], max(inter_clamp[0], 1.0 + n - mean)) for n in norm]

    alpha = [1.0] * rows
    if group > 1 and rows >= group:
        for g in range(rows // group):
            alpha[g * group:(g + 1) * group] = factors(phi[g * group:(g + 1) * group])
    else:
        alpha = factors(phi)
    return {"focus": w, "compensation": comp, "gate": gate, "w_hat": w_hat, "psi": psi, "alpha": alpha}


def ref_clip_cov_candidates(logps, adv, mask, old, eps_low, eps_high, lb, ub):
    """The public compute_policy_loss_clip_cov up to the random draw: (candidates, covariance) as nested lists."""
    rows, cols = len(logps), len(logps[0])
    cells = [(b, t) for b in range(rows) for t in range(cols) if mask[b][t]]
    mean_adv = sum(adv[b] for b, _ in cells) / len(cells)
    mean_logp = sum(logps[b][t] for b, t in cells) / len(cells)
    cov = [[(adv[b] - mean_adv) * (logps[b][t] - mean_logp) if mask[b][t] else 0.0 for t in range(cols)]
           for b in range(rows)]
    candidates = set()
    for b, t in cells:
        ratio = 1.0 if old is None else math.exp(logps[b][t] - old[b][t])
        loss1 = -adv[b] * ratio
        loss2 = -adv[b] * min(max(ratio, 1 - eps_low), 1 + eps_high)
        if lb < cov[b][t] < ub and not loss2 > loss1:
            candidates.add((b, t))
    return candidates, cov


def _ctx(args, mask, advantages, logps=None, scores=None, no_image=None, old_logps=None):
    rows = mask.shape[0]
    return LossContext(args=args, training=True, progress=0.25, mask=mask, advantages=advantages,
                       logps=torch.zeros(mask.shape) if logps is None else logps, entropies=None, scores=scores,
                       no_image=torch.zeros(rows, dtype=torch.bool) if no_image is None else no_image,
                       old_logps=old_logps)


def _lengths_mask(lengths, cols, holes=()):
    mask = torch.tensor([[t < n for t in range(cols)] for n in lengths])
    for b, t in holes:  # a tool-masked token inside a response
        mask[b, t] = False
    return mask


# --- the score: cosine to the mean image vector -------------------------------------------------------------------


def test_cosine_to_mean_equals_the_public_formula_loop():
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 12, 5, generator=gen) * torch.rand(3, 12, 1, generator=gen) * 4  # unequal norms
    vision = torch.zeros(3, 12, dtype=torch.bool)
    vision[0, 1:5] = True
    vision[1, 2:4] = True  # row 2: no image
    got = layer_similarity(hidden, vision, 6, "cosine_to_mean")
    expected = ref_cosine_to_mean(hidden, vision, 6)
    assert (got.double() - expected).abs().max().item() <= 1e-6
    # it is not pepo's mean of cosines when the image vectors' norms differ
    assert (layer_similarity(hidden, vision, 6, "cosine").double() - expected).abs().max().item() > 1e-3


def test_capture_with_vgpo_options_equals_the_last_hidden_state_loop(tiny_vlm, rl_rows):
    """What the trainer captures for vgpo (last hidden state = final norm output, cosine to the mean image vector)
    equals the loop on transformers' `output_hidden_states[-1]`."""
    model, processor = tiny_vlm
    rows = rl_rows.select(range(3))
    batch = encode_prompts(processor, rows["prompt"], rows["images"], ["<answer>1</answer>", "two", "<answer>3"])
    inputs = {k: v for k, v in batch.items() if k != "prompt_lengths"}
    vision = inputs["input_ids"] == image_token_id(model, processor)
    with torch.no_grad():
        last = model(**inputs, output_hidden_states=True).hidden_states[-1]
    capture = VisualScoreCapture(model, "cosine_to_mean", layers=[-1])
    with torch.no_grad(), capture.record(vision, 5):
        model(**inputs)
    expected = ref_cosine_to_mean(last, vision, 5)
    assert (capture.scores.double() - expected).abs().max().item() <= 1e-5


# --- VGPO ---------------------------------------------------------------------------------------------------------


def _vgpo_case(rows, cols, seed):
    """Scores on a 1/64 grid (exact in float32 and float64, so ties stay ties), unequal lengths, a hole, one
    row without image."""
    gen = torch.Generator().manual_seed(seed)
    scores = (torch.randint(-20, 60, (rows, cols), generator=gen).double() / 64)
    scores[0, 6] = scores[0, 8] = 1.0  # a tie at the top of a tail (every other score is below 60 / 64)
    lengths = [cols, 3, cols - 1, 1, 5, cols - 2, 4, cols, 2, cols][:rows]
    mask = _lengths_mask(lengths, cols, holes=[(0, 2)])
    no_image = torch.zeros(rows, dtype=torch.bool)
    no_image[2] = True
    return scores, mask, no_image


@pytest.mark.parametrize("rows,group", [(6, 8), (10, 4)])  # whole micro-batch; chunks of 4 with 2 rows left over
def test_vgpo_quantities_equal_the_public_code_loop(rows, group, tmp_path):
    vgpo = get_method("vgpo")
    args = make_config(tmp_path, method="vgpo", num_generations=group, per_device_train_batch_size=8)
    assert (args.vision_score_type, args.vision_layers, args.loss_type, args.delta) == ("cosine_to_mean", [-1],
                                                                                         "dapo", 3.0)
    scores, mask, no_image = _vgpo_case(rows, 9, seed=rows)
    advantages = torch.linspace(-1.0, 1.0, rows)
    ctx = _ctx(args, mask, advantages, scores=scores.float(), no_image=no_image)
    weights = vgpo.token_weights(ctx)
    alpha = vgpo.advantage_scale(ctx)
    terms = ctx.cache["vgpo"]
    ref = ref_vgpo(scores.tolist(), mask.tolist(), (~no_image).tolist(), 0.3, 0.5, 0.2, group)
    for name in ("focus", "compensation", "w_hat"):
        assert (terms[name].double() - torch.tensor(ref[name])).abs().max().item() <= 1e-5, name
    assert terms["gate"].tolist() == [[bool(g) for g in row] for row in ref["gate"]]
    assert terms["gate"].any() and (terms["gate"].sum(1) > 1).any()  # the tie passes together
    torch.testing.assert_close(weights.multiplier.double(), torch.tensor(ref["psi"], dtype=torch.float64),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(alpha.double(), torch.tensor(ref["alpha"], dtype=torch.float64), atol=1e-5, rtol=0)
    assert weights.fallback.tolist() == no_image.tolist()
    assert (weights.multiplier[2][mask[2]] == 1.0).all()  # no image: uniform
    if rows >= group:
        assert alpha[-2:].tolist() == [1.0, 1.0]  # past the last whole chunk
    # the intra / inter switches
    args.vgpo_intra, args.vgpo_inter = False, False
    off = _ctx(args, mask, advantages, scores=scores.float(), no_image=no_image)
    assert vgpo.token_weights(off) is None and vgpo.advantage_scale(off) is None


def test_vgpo_non_finite_scores_fall_back_to_uniform(tmp_path):
    vgpo = get_method("vgpo")
    args = make_config(tmp_path, method="vgpo")
    scores, mask, _ = _vgpo_case(4, 9, seed=1)
    scores[0, 1] = float("nan")
    ctx = _ctx(args, mask, torch.ones(4), scores=scores.float())
    weights = vgpo.token_weights(ctx)
    assert torch.isfinite(weights.multiplier).all() and torch.isfinite(vgpo.advantage_scale(ctx)).all()
    assert weights.fallback.tolist() == [True, False, False, False]
    assert (weights.multiplier[0][mask[0]] == 1.0).all()


def test_vgpo_gradient_is_grpo_with_the_loop_advantages(tiny_vlm, tmp_path):
    """One micro-batch through the trainer: the gradient equals GRPO's (same loss shape) with A_i x alpha_i x psi_it
    from the float64 loop on the scores the trainer captured; without them it differs."""
    trainer = make_trainer(tiny_vlm, tmp_path, method="vgpo", dynamic_sampling=False)
    inputs = _prepared_batch(trainer, progress=0.5)
    _, grads_method = _loss_and_grads(trainer, inputs)
    scores, mask = trainer.last_token_stats["scores"], trainer.last_token_stats["mask"]
    ref = ref_vgpo(scores.double().tolist(), mask.tolist(), [True] * mask.shape[0], 0.3, 0.5, 0.2,
                   trainer.args.num_generations)
    token_adv = (inputs["advantages"].double()[:, None] * torch.tensor(ref["alpha"])[:, None]
                 * torch.tensor(ref["psi"])).float()
    trainer.args.method = "grpo"
    _, grads_grpo = _loss_and_grads(trainer, {**inputs, "advantages": token_adv})
    scale = max(g.abs().max().item() for g in grads_grpo)
    assert scale > 0 and _max_diff(grads_method, grads_grpo) <= 1e-5 * scale
    _, grads_plain = _loss_and_grads(trainer, inputs)
    assert _max_diff(grads_method, grads_plain) > 1e-3 * scale


# --- Clip-Cov -----------------------------------------------------------------------------------------------------


def _clip_cov_case(seed=0):
    gen = torch.Generator().manual_seed(seed)
    rows, cols = 6, 8
    mask = _lengths_mask([8, 5, 7, 2, 8, 6], cols, holes=[(4, 3)])
    logps = -(torch.rand(rows, cols, generator=gen, dtype=torch.float64) * 6)
    advantages = torch.tensor([1.5, -1.2, 0.8, -0.4, 1.1, -1.6], dtype=torch.float64)
    old = logps + torch.randn(rows, cols, generator=gen, dtype=torch.float64) * 0.6  # ratios on both sides of the clip
    return logps, advantages, mask, old


@pytest.mark.parametrize("off_policy", [False, True])
def test_clip_cov_quantities_equal_the_public_code_loop(off_policy, tmp_path):
    clip_cov = get_method("clip_cov")
    args = make_config(tmp_path, method="clip_cov", epsilon=0.2, clip_cov_lb=0.2, clip_cov_ub=3.0)
    assert (args.loss_type, args.epsilon_high, args.delta) == ("bnpo", 1.0, None)
    logps, adv, mask, old = _clip_cov_case()
    old = old if off_policy else None
    ctx = _ctx(args, mask, adv.float(), logps=logps.float(), old_logps=None if old is None else old.float())
    keep = clip_cov.token_mask(ctx)
    terms = ctx.cache["clip_cov"]
    candidates, cov = ref_clip_cov_candidates(logps.tolist(), adv.tolist(), mask.tolist(),
                                              None if old is None else old.tolist(), 0.2, 1.0, 0.2, 3.0)
    assert (terms["cov"].double() - torch.tensor(cov)).abs().max().item() <= 1e-5
    assert {tuple(x) for x in terms["candidates"].nonzero().tolist()} == candidates
    count = max(int(2e-4 * int(mask.sum())), 1)  # 1 here
    detached = {tuple(x) for x in terms["detached"].nonzero().tolist()}
    assert len(detached) == min(count, len(candidates)) and detached <= candidates
    assert keep.tolist() == (mask & ~terms["detached"]).tolist()
    # the same micro-batch draws the same tokens (deterministic in seed, progress and the tokens)
    again = _ctx(args, mask, adv.float(), logps=logps.float(), old_logps=ctx.old_logps)
    assert clip_cov.token_mask(again).tolist() == keep.tolist()
    # a ratio that covers every candidate detaches exactly the candidate set
    args.clip_cov_ratio = 1.0
    every = _ctx(args, mask, adv.float(), logps=logps.float(), old_logps=ctx.old_logps)
    assert {tuple(x) for x in (mask & ~clip_cov.token_mask(every)).nonzero().tolist()} == candidates


def test_clip_cov_skips_tokens_the_ppo_clip_already_clips(tmp_path):
    """A token inside the covariance band with A > 0 and ratio above 1 + epsilon_high is not a candidate."""
    clip_cov = get_method("clip_cov")
    args = make_config(tmp_path, method="clip_cov", epsilon=0.2, epsilon_high=0.28, clip_cov_lb=-100.0,
                       clip_cov_ub=100.0, clip_cov_ratio=1.0)
    mask = torch.ones(2, 2, dtype=torch.bool)
    logps = torch.tensor([[-1.0, -2.0], [-0.5, -3.0]])
    old = logps.clone()
    old[0, 0] = -1.5  # ratio e^0.5 = 1.65 > 1.28 with A = +1: clipped
    old[1, 1] = -2.0  # ratio e^-1 = 0.37 < 0.8 with A = -1: clipped
    ctx = _ctx(args, mask, torch.tensor([1.0, -1.0]), logps=logps, old_logps=old)
    assert clip_cov.token_mask(ctx).tolist() == [[True, False], [False, True]]
    on_policy = _ctx(args, mask, torch.tensor([1.0, -1.0]), logps=logps)
    assert not clip_cov.token_mask(on_policy).any()


def test_clip_cov_gradient_is_grpo_with_the_loop_mask(tiny_vlm, tmp_path, monkeypatch):
    """Through the trainer (every candidate detached): the gradient equals GRPO's (bnpo, clip 0.2 / 1.0) with
    A_i x [t not a candidate of the loop]; the detached tokens still count in the token mean."""
    seen = {}
    token_mask = ClipCov.token_mask

    def spy(self, ctx):
        seen.update(logps=ctx.logps.detach().double(), mask=ctx.mask.clone(), adv=ctx.advantages.double())
        return token_mask(self, ctx)

    monkeypatch.setattr(ClipCov, "token_mask", spy)
    trainer = make_trainer(tiny_vlm, tmp_path, method="clip_cov", dynamic_sampling=False, clip_cov_lb=0.0,
                           clip_cov_ratio=1.0)
    inputs = _prepared_batch(trainer, progress=0.5)
    _, grads_method = _loss_and_grads(trainer, inputs)
    candidates, _ = ref_clip_cov_candidates(seen["logps"].tolist(), seen["adv"].tolist(), seen["mask"].tolist(),
                                            None, 0.2, 1.0, 0.0, 5.0)
    assert 0 < len(candidates) < int(seen["mask"].sum())
    keep = seen["mask"].float()
    for b, t in candidates:
        keep[b, t] = 0.0
    trainer.args.method = "grpo"
    _, grads_grpo = _loss_and_grads(trainer, {**inputs, "advantages": inputs["advantages"].unsqueeze(1) * keep})
    scale = max(g.abs().max().item() for g in grads_grpo)
    assert scale > 0 and _max_diff(grads_method, grads_grpo) <= 1e-6 * scale
    _, grads_plain = _loss_and_grads(trainer, inputs)
    assert _max_diff(grads_method, grads_plain) > 1e-4 * scale


# --- options, errors, the CLI -------------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides,field", [
    ({"method": "vgpo", "vgpo_gate_fraction": 0.0}, "vgpo_gate_fraction"),
    ({"method": "vgpo", "vgpo_gate_start": 1.0}, "vgpo_gate_start"),
    ({"method": "vgpo", "vgpo_intra_min": 2.5}, "vgpo_intra_min"),
    ({"method": "vgpo", "vgpo_similarity": "dot"}, "vgpo_similarity"),
    ({"method": "vgpo", "vision_score_type": "dot"}, "vision_score_type"),
    ({"method": "clip_cov", "clip_cov_lb": 5.0, "clip_cov_ub": 1.0}, "clip_cov_lb"),
    ({"method": "clip_cov", "clip_cov_ratio": 2.0}, "clip_cov_ratio"),
])
def test_bad_options_name_the_field(overrides, field, tmp_path):
    with pytest.raises(ValueError, match=field):
        make_config(tmp_path, **overrides)


def test_vgpo_similarity_cosine_is_pepos_score(tmp_path):
    args = make_config(tmp_path, method="vgpo", vgpo_similarity="cosine", vision_layers=[0, -1])
    assert (args.vision_score_type, args.vision_layers) == ("cosine", [0, -1])  # explicit values win


@pytest.mark.parametrize("method,metric,lo,hi", [("vgpo", "vgpo/psi_max", 1.0, 2.0),
                                                 ("clip_cov", "clip_cov/detached_fraction", 0.0, 0.05)])
def test_method_trains_in_the_demo(method, metric, lo, hi, tmp_path):
    from pepo.cli import main

    out = tmp_path / "run"
    code = main(["demo", "--method", method, "--num_train", "32", "--num_test", "8", "--warm_start_steps", "2",
                 "--warm_start_target", "0", "--warm_start_min_accuracy", "0", "--max_steps", "2",
                 "--logging_steps", "1", "--per_device_train_batch_size", "16", "--dynamic_sampling", "false",
                 "--output_dir", str(out)])
    assert code == 0
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    values = [m[metric] for m in metrics if metric in m]
    assert len(values) == 2 and all(lo <= v <= hi for v in values), values
    assert f"method: {method}" in (out / "config.yaml").read_text()


def test_vgpo_range_holds_zero_even_without_padding(tmp_path):
    """The public code pads every response to max_response_length with zero hidden states (cosine 0), so 0 is
    always inside its micro-batch range: with every token valid and every score positive, the focus minimum is
    min(s) / max(s) > 0, not 0."""
    vgpo = get_method("vgpo")
    args = make_config(tmp_path, method="vgpo")
    scores = torch.tensor([[0.5, 0.25, 0.75], [1.0, 0.5, 0.25]])
    ctx = _ctx(args, torch.ones(2, 3, dtype=torch.bool), torch.ones(2), scores=scores)
    vgpo.token_weights(ctx)
    expected = ref_vgpo(scores.double().tolist(), [[True] * 3] * 2, [True, True], 0.3, 0.5, 0.2, 8)["focus"]
    assert expected[0][1] == pytest.approx(0.25, abs=1e-7)
    torch.testing.assert_close(ctx.cache["vgpo"]["focus"].double(), torch.tensor(expected, dtype=torch.float64),
                               atol=1e-6, rtol=0)


def test_trainer_hands_the_sampling_policy_logps_to_the_method(tiny_vlm, tmp_path, monkeypatch):
    """Off-policy (two iterations per generation batch) ctx.old_logps is TRL's old_per_token_logps; on-policy None."""
    seen = []
    token_mask = ClipCov.token_mask

    def spy(self, ctx):
        seen.append(ctx.old_logps)
        return token_mask(self, ctx)

    monkeypatch.setattr(ClipCov, "token_mask", spy)
    for iterations in (1, 2):
        trainer = make_trainer(tiny_vlm, tmp_path, method="clip_cov", dynamic_sampling=False, num_iterations=iterations)
        inputs = _prepared_batch(trainer, progress=0.5)
        trainer.compute_loss(trainer.model, inputs)
        old = inputs.get("old_per_token_logps")
        assert (old is None) == (iterations == 1)
        assert seen[-1] is old


def test_vgpo_token_factor_is_clamped_at_0_1(tmp_path):
    """One low token among many high ones: 1 + w_hat - mean(w_hat) < 0.1, clamped as the public code."""
    vgpo = get_method("vgpo")
    args = make_config(tmp_path, method="vgpo", vgpo_compensation_strength=0.0)
    scores = torch.tensor([[0.0] + [1.0] * 19, [0.5] * 10 + [0.25] * 10])
    mask = torch.ones(2, 20, dtype=torch.bool)
    ref = ref_vgpo(scores.double().tolist(), mask.tolist(), [True, True], 0.0, 0.5, 0.2, 8)["psi"]
    assert min(ref[0]) == 0.1  # 1 + 0 - 0.95 would be 0.05
    weights = vgpo.token_weights(_ctx(args, mask, torch.ones(2), scores=scores))
    torch.testing.assert_close(weights.multiplier.double(), torch.tensor(ref, dtype=torch.float64), atol=1e-6, rtol=0)
