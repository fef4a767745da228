"""Tests of pepo.weights against literal float64 references written with plain loops."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import pepo.weights as W
from pepo.weights import (
    SCORE_TYPES,
    exploration_only_weights,
    fallback_rows,
    layer_similarity,
    pepo_token_weights,
    perception_only_weights,
    rows_without_image,
    scheduled_weights,
    token_entropy,
    visual_similarity,
)

# --------------------------------------------------------------------------------------------
# Literal references (float64, Python loops over single vectors / scalars)
# --------------------------------------------------------------------------------------------


def _ref_sim(a: torch.Tensor, b: torch.Tensor, score_type: str) -> float:
    a, b = a.double(), b.double()
    if score_type == "cosine":
        return float(torch.dot(a, b) / (torch.linalg.vector_norm(a) * torch.linalg.vector_norm(b)))
    if score_type == "dot":
        return float(torch.dot(a, b))
    if score_type == "l2":
        return -math.sqrt(sum((float(x) - float(y)) ** 2 for x, y in zip(a, b)))
    if score_type == "l1":
        return -sum(abs(float(x) - float(y)) for x, y in zip(a, b))
    raise AssertionError(score_type)


def ref_visual_similarity(hidden_states, vision_mask, completion_length, score_type, layers=None):
    n = len(hidden_states)
    used = list(range(n)) if layers is None else [i % n for i in layers]
    batch, seq_len, _ = hidden_states[0].shape
    out = torch.zeros(batch, completion_length, dtype=torch.float64)
    for b in range(batch):
        images = [j for j in range(seq_len) if bool(vision_mask[b, j])]
        if not images:
            continue
        for t in range(completion_length):
            pos = seq_len - completion_length + t
            per_layer = []
            for layer in used:
                h = hidden_states[layer]
                sims = [_ref_sim(h[b, pos], h[b, j], score_type) for j in images]
                per_layer.append(sum(sims) / len(sims))
            out[b, t] = sum(per_layer) / len(per_layer)
    return out


def _ref_row_minmax(values):
    low, high = min(values), max(values)
    return [(x - low) / max(high - low, 1e-6) for x in values]


def _ref_softmax_times_n(logits):
    peak = max(logits)
    exp = [math.exp(x - peak) for x in logits]
    total = sum(exp)
    return [e / total * len(logits) for e in exp]


def _ref_rows(values_a, values_b, mask, row_fn):
    """Apply row_fn(list_a, list_b) to each row's valid tokens; uniform on non-finite; 0 on padding."""
    batch, length = mask.shape
    out = torch.zeros(batch, length, dtype=torch.float64)
    for b in range(batch):
        idx = [t for t in range(length) if bool(mask[b, t])]
        if not idx:
            continue
        a = [float(values_a[b, t]) for t in idx]
        h = [float(values_b[b, t]) for t in idx]
        if not all(math.isfinite(x) for x in a + h):
            row = [1.0] * len(idx)
        else:
            row = row_fn(a, h)
        for t, w in zip(idx, row):
            out[b, t] = w
    return out


def ref_pepo(vs, ent, mask, alpha, tau):
    def row(scores, entropies):
        mixed = [v + h for v, h in zip(_ref_row_minmax(scores), _ref_row_minmax(entropies))]
        mean = sum(mixed) / len(mixed)
        logits = [s * (1.0 + alpha * math.tanh(m - mean)) / tau for s, m in zip(scores, mixed)]
        return _ref_softmax_times_n(logits)

    return _ref_rows(vs, ent, mask, row)


def ref_exploration(ent, mask, tau):
    def row(_, entropies):
        return _ref_softmax_times_n([x / tau for x in _ref_row_minmax(entropies)])

    return _ref_rows(torch.zeros_like(ent), ent, mask, row)


def ref_entropy(logits):
    x = logits.double()
    p = torch.softmax(x, dim=-1)
    return -(torch.where(p > 0, p * torch.log(p), torch.zeros_like(p))).sum(-1)


# --------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------

B, S, D, C, N_LAYERS = 3, 40, 16, 12, 3


def make_vision_mask() -> torch.Tensor:
    mask = torch.zeros(B, S, dtype=torch.bool)
    mask[0, 2:7] = True  # several separate image spans in one row
    mask[0, 12:16] = True
    mask[0, 20] = True
    mask[1, 5:14] = True  # one span, other count
    mask[2, 0:2] = True
    mask[2, 9:12] = True
    mask[2, 25:27] = True
    return mask


def make_hidden(dtype=torch.float32, seed=0, n_layers=N_LAYERS):
    gen = torch.Generator().manual_seed(seed)
    # a shared offset makes cosine values spread away from 0, as in real models
    offset = torch.randn(D, generator=gen)
    return [(torch.randn(B, S, D, generator=gen) + 0.5 * offset).to(dtype) for _ in range(n_layers)]


LAYER_CHOICES = [None, [0, -1], [1]]


@pytest.mark.parametrize("layers", LAYER_CHOICES)
@pytest.mark.parametrize("score_type", SCORE_TYPES)
def test_visual_similarity_matches_literal_reference_fp32(score_type, layers):
    hidden = make_hidden(torch.float32, seed=1)
    mask = make_vision_mask()
    got = visual_similarity(hidden, mask, C, score_type=score_type, layers=layers)
    ref = ref_visual_similarity(hidden, mask, C, score_type, layers)
    assert got.dtype == torch.float32 and got.shape == (B, C)
    assert (got.double() - ref).abs().max().item() <= 1e-5


# bf16/fp16 inputs are upcast to float32 before any arithmetic, so against a reference on the SAME
# low-precision values (upcast to float64) the only error is float32 rounding: ~1e-7 relative.
# Tolerances: 1e-5 absolute for cosine (values in [-1, 1]); 1e-5 relative to the largest |score|
# for dot/l1/l2 (they scale with |h|^2 resp. |h|). bf16 arithmetic would miss these by ~1e-2.
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("score_type", SCORE_TYPES)
def test_visual_similarity_low_precision_inputs_are_upcast(score_type, dtype):
    hidden = make_hidden(dtype, seed=2)
    mask = make_vision_mask()
    got = visual_similarity(hidden, mask, C, score_type=score_type)
    ref = ref_visual_similarity([h.double() for h in hidden], mask, C, score_type)
    assert got.dtype == torch.float32
    err = (got.double() - ref).abs().max().item()
    tol = 1e-5 if score_type == "cosine" else 1e-5 * ref.abs().max().item()
    assert err <= tol, (err, tol)


@pytest.mark.parametrize("score_type", SCORE_TYPES)
def test_visual_similarity_small_chunks_match_reference(score_type, monkeypatch):
    # tiny blocks force every chunked loop through several, uneven iterations
    monkeypatch.setattr(W, "_CHUNK", 7)
    monkeypatch.setattr(W, "_BLOCK_ELEMENTS", 3 * 9 * D * 2)
    hidden = make_hidden(torch.bfloat16, seed=3)
    mask = make_vision_mask()
    got = visual_similarity(hidden, mask, C, score_type=score_type, layers=[2, 0])
    ref = ref_visual_similarity([h.double() for h in hidden], mask, C, score_type, [2, 0])
    assert (got.double() - ref).abs().max().item() <= 1e-5 * max(1.0, ref.abs().max().item())


@pytest.mark.parametrize("score_type", SCORE_TYPES)
def test_visual_similarity_is_mean_of_layer_similarity(score_type):
    hidden = make_hidden(seed=4)
    mask = make_vision_mask()
    per_layer = torch.stack([layer_similarity(h, mask, C, score_type) for h in hidden])
    torch.testing.assert_close(visual_similarity(hidden, mask, C, score_type), per_layer.mean(0))


@pytest.mark.parametrize("score_type", SCORE_TYPES)
def test_full_completion_and_int_mask(score_type):
    hidden = make_hidden(seed=5, n_layers=1)
    mask = make_vision_mask()
    got = visual_similarity(hidden, mask.long(), S, score_type)  # every position scored
    ref = ref_visual_similarity(hidden, mask, S, score_type)
    assert (got.double() - ref).abs().max().item() <= 1e-5 * max(1.0, ref.abs().max().item())


@pytest.mark.parametrize("score_type", SCORE_TYPES)
def test_row_without_image_scores_zero_and_is_detected(score_type):
    hidden = make_hidden(seed=6)
    mask = make_vision_mask()
    mask[1] = False
    got = visual_similarity(hidden, mask, C, score_type)
    assert torch.equal(got[1], torch.zeros(C))
    assert got[0].abs().sum() > 0 and got[2].abs().sum() > 0
    assert rows_without_image(mask).tolist() == [False, True, False]
    no_image = torch.zeros(B, S, dtype=torch.bool)
    assert torch.equal(visual_similarity(hidden, no_image, C, score_type), torch.zeros(B, C))


@pytest.mark.parametrize("score_type", SCORE_TYPES)
def test_non_finite_hidden_states_propagate_then_fall_back(score_type):
    hidden = make_hidden(seed=7)
    mask = make_vision_mask()
    hidden[1] = hidden[1].clone()
    hidden[1][0, S - C + 3, 5] = float("nan")  # a completion token of row 0
    hidden[1][2, 10, 0] = float("inf")  # an image token of row 2
    hidden[1][1, 20, 1] = float("nan")  # a text token (neither image nor completion) of row 1
    scores = visual_similarity(hidden, mask, C, score_type)
    assert not torch.isfinite(scores[0, 3])
    assert torch.isfinite(scores[0, :3]).all() and torch.isfinite(scores[0, 4:]).all()
    assert not torch.isfinite(scores[2]).all()
    # row 1 only uses image and completion tokens, so the NaN elsewhere does not reach it
    assert torch.isfinite(scores[1]).all()

    entropies = torch.rand(B, C)
    cmask = torch.ones(B, C, dtype=torch.bool)
    assert fallback_rows(scores, entropies, cmask).tolist() == [True, False, True]
    weights = pepo_token_weights(scores, entropies, cmask)
    assert torch.isfinite(weights).all()
    assert torch.equal(weights[0], torch.ones(C)) and torch.equal(weights[2], torch.ones(C))
    torch.testing.assert_close(weights[1].mean(), torch.tensor(1.0), atol=1e-5, rtol=0)


@pytest.mark.parametrize("score_type", ["cosine", "dot"])
def test_cosine_dot_never_allocate_completion_by_image_matrix(score_type):
    from torch.profiler import ProfilerActivity, profile

    batch, seq_len, dim, comp, n_img = 2, 3000, 64, 1000, 1500
    gen = torch.Generator().manual_seed(8)
    hidden = (torch.randn(batch, seq_len, dim, generator=gen) + 0.3).bfloat16()
    mask = torch.zeros(batch, seq_len, dtype=torch.bool)
    mask[0, 100 : 100 + n_img] = True
    mask[1, 50:800] = True  # two spans, also 1500 image tokens
    mask[1, 1000:1750] = True
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        got = layer_similarity(hidden, mask, comp, score_type)
    largest = max(event.cpu_memory_usage for event in prof.events())
    assert largest > 0  # the profiler did record allocations
    # no (C x V) float matrix (6 MB per row) and no full float32 copy of the bf16 layer (1.5 MB)
    assert largest < comp * n_img * 4 / 4
    assert largest < batch * seq_len * dim * 4 / 2

    # dense float64 reference (builds the C x V matrix on purpose) on the same bf16 values
    h = hidden.double()
    ref = torch.empty(batch, comp, dtype=torch.float64)
    for b in range(batch):
        images, tokens = h[b][mask[b]], h[b, -comp:]
        if score_type == "cosine":
            images, tokens = F.normalize(images, dim=-1), F.normalize(tokens, dim=-1)
        ref[b] = (tokens @ images.T).mean(dim=1)
    assert (got.double() - ref).abs().max().item() <= 1e-5 * max(1.0, ref.abs().max().item())


def test_layer_similarity_backward_matches_dense_autograd():
    hidden = make_hidden(seed=9, n_layers=1)[0].double()
    mask = make_vision_mask()
    for score_type in SCORE_TYPES:
        x = hidden.clone().requires_grad_(True)
        layer_similarity(x, mask, C, score_type).sum().backward()
        y = hidden.clone().requires_grad_(True)
        total = 0.0
        for b in range(B):
            images, tokens = y[b][mask[b]], y[b, -C:]
            if score_type == "cosine":
                sim = F.normalize(tokens, dim=-1) @ F.normalize(images, dim=-1).T
            elif score_type == "dot":
                sim = tokens @ images.T
            else:
                sim = -(tokens[:, None] - images[None]).norm(p=2 if score_type == "l2" else 1, dim=-1)
            total = total + sim.mean(dim=1).sum()
        total.backward()
        torch.testing.assert_close(x.grad, y.grad, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(score_type="cos"), r"score_type.*\['cosine', 'dot', 'l2', 'l1'\]"),
        (dict(completion_length=0), "completion_length"),
        (dict(completion_length=S + 1), "completion_length"),
        (dict(completion_length=2.0), "completion_length"),
        (dict(layers=[3]), "layers"),
        (dict(layers=[-4]), "layers"),
        (dict(layers=[]), "layers"),
        (dict(vision_mask=torch.zeros(B, S - 1, dtype=torch.bool)), "vision_mask"),
        (dict(hidden_states=[]), "hidden_states"),
        (dict(hidden_states=[torch.zeros(B, S, D), torch.zeros(B, S, D + 1)]), r"hidden_states\[1\]"),
        (dict(hidden_states=[torch.zeros(S, D)]), "hidden_states"),
    ],
)
def test_visual_similarity_validation(kwargs, match):
    args = dict(hidden_states=make_hidden(), vision_mask=make_vision_mask(), completion_length=C)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        visual_similarity(**args)


def test_layer_similarity_validation():
    with pytest.raises(ValueError, match="score_type"):
        layer_similarity(torch.zeros(B, S, D), make_vision_mask(), C, "cosine_sim")
    with pytest.raises(ValueError, match="vision_mask"):
        layer_similarity(torch.zeros(B, S, D), torch.zeros(B + 1, S, dtype=torch.bool), C)
    with pytest.raises(ValueError, match="completion_length"):
        layer_similarity(torch.zeros(B, S, D), make_vision_mask(), -1)


# --------------------------------------------------------------------------------------------
# Entropy
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("scale", [1.0, 10.0])
def test_token_entropy_matches_reference(dtype, scale):
    gen = torch.Generator().manual_seed(10)
    logits = (torch.randn(3, 7, 50, generator=gen) * scale).to(dtype)
    got = token_entropy(logits)
    assert got.dtype == torch.float32 and got.shape == (3, 7)
    # reference on the same low-precision values: only float32 rounding separates them
    assert (got.double() - ref_entropy(logits)).abs().max().item() <= 1e-5
    assert (got >= 0).all() and (got <= math.log(50) + 1e-5).all()


def test_token_entropy_huge_logits_and_banned_tokens():
    gen = torch.Generator().manual_seed(11)
    logits = torch.randn(2, 5, 30, generator=gen) * 1e4
    logits[0, 0] = 1e4  # uniform over all 30 tokens despite the magnitude
    logits[1, 1, :10] = -float("inf")  # banned tokens
    got = token_entropy(logits)
    assert torch.isfinite(got).all()
    assert abs(got[0, 0].item() - math.log(30)) <= 1e-5
    assert (got.double() - ref_entropy(logits)).abs().max().item() <= 1e-4
    got_bf16 = token_entropy(logits.bfloat16())
    assert torch.isfinite(got_bf16).all()


def test_token_entropy_chunked_rows(monkeypatch):
    monkeypatch.setattr(W, "_BLOCK_ELEMENTS", 3 * 40)  # 3 rows of 40 logits per block
    logits = torch.randn(2, 4, 5, 40, generator=torch.Generator().manual_seed(12))
    got = token_entropy(logits)
    assert got.shape == (2, 4, 5)
    assert (got.double() - ref_entropy(logits)).abs().max().item() <= 1e-5


def test_token_entropy_uniform_and_one_hot():
    assert abs(token_entropy(torch.zeros(1, 1, 64)).item() - math.log(64)) <= 1e-6
    one_hot = torch.full((1, 1, 64), -1e9)
    one_hot[..., 3] = 0.0
    assert token_entropy(one_hot).item() == 0.0


# --------------------------------------------------------------------------------------------
# Token weights
# --------------------------------------------------------------------------------------------

WB, WC = 6, 10


def make_weight_inputs(seed=0):
    gen = torch.Generator().manual_seed(seed)
    scores = torch.rand(WB, WC, generator=gen) * 1.6 - 0.8  # cosine-like scores
    entropies = torch.rand(WB, WC, generator=gen) * 3.0
    mask = torch.ones(WB, WC, dtype=torch.bool)
    mask[1, 6:] = False  # right padding
    mask[2, :3] = False  # left padding
    mask[3, ::3] = False  # holes (e.g. tool tokens)
    mask[4, 1:] = False  # one valid token
    mask[5] = False  # no valid token
    # padding may hold anything: the weights must not depend on it
    scores[1, 6:] = 100.0
    entropies[2, :3] = -50.0
    return scores, entropies, mask


def assert_weight_invariants(weights, mask):
    assert weights.dtype == torch.float32
    assert torch.isfinite(weights).all()
    assert (weights >= 0).all()
    assert (weights[~mask] == 0).all()
    for b in range(mask.shape[0]):
        n = int(mask[b].sum())
        if n:
            assert abs(weights[b][mask[b]].double().mean().item() - 1.0) <= 1e-5


@pytest.mark.parametrize("alpha", [0.0, 0.05, 0.5, 3.0])
@pytest.mark.parametrize("tau", [0.2, 1.8, 10.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_pepo_token_weights_match_literal_reference(alpha, tau, seed):
    scores, entropies, mask = make_weight_inputs(seed)
    got = pepo_token_weights(scores, entropies, mask, gate_alpha=alpha, gate_temperature=tau)
    ref = ref_pepo(scores, entropies, mask, alpha, tau)
    assert (got.double() - ref).abs().max().item() <= 1e-5
    assert_weight_invariants(got, mask)
    # a float 0/1 mask and bf16 inputs are accepted; the computation stays float32
    got_float_mask = pepo_token_weights(scores, entropies, mask.float(), gate_alpha=alpha, gate_temperature=tau)
    assert torch.equal(got, got_float_mask)
    low = pepo_token_weights(scores.bfloat16(), entropies.half(), mask, gate_alpha=alpha, gate_temperature=tau)
    ref_low = ref_pepo(scores.bfloat16(), entropies.half(), mask, alpha, tau)
    assert (low.double() - ref_low).abs().max().item() <= 1e-5


@pytest.mark.parametrize("tau", [0.3, 1.8, 5.0])
def test_perception_only_is_pepo_without_gate(tau):
    scores, entropies, mask = make_weight_inputs(2)
    got = perception_only_weights(scores, mask, tau)
    ref = ref_pepo(scores, torch.zeros_like(scores), mask, 0.0, tau)
    assert (got.double() - ref).abs().max().item() <= 1e-5
    # with alpha = 0 the entropies have no influence at all
    torch.testing.assert_close(got, pepo_token_weights(scores, entropies, mask, 0.0, tau), atol=1e-6, rtol=0)
    assert_weight_invariants(got, mask)


@pytest.mark.parametrize("tau", [0.3, 1.8, 5.0])
def test_exploration_only_matches_literal_reference(tau):
    scores, entropies, mask = make_weight_inputs(3)
    got = exploration_only_weights(entropies, mask, tau)
    ref = ref_exploration(entropies, mask, tau)
    assert (got.double() - ref).abs().max().item() <= 1e-5
    assert_weight_invariants(got, mask)
    for b in range(WB):  # spread within a response bounded by e^(1/tau)
        valid = got[b][mask[b]]
        if valid.numel():
            assert valid.max() / valid.min() <= math.exp(1 / tau) * (1 + 1e-5)


def _all_weight_fns(scores, entropies, mask, no_image=None):
    return {
        "pepo": pepo_token_weights(scores, entropies, mask, no_image_rows=no_image),
        "perception": perception_only_weights(scores, mask, 1.8, no_image_rows=no_image),
        "exploration": exploration_only_weights(entropies, mask, 1.8),
    }


def test_zero_and_one_valid_token_rows():
    scores, entropies, mask = make_weight_inputs(4)
    for name, weights in _all_weight_fns(scores, entropies, mask).items():
        assert torch.equal(weights[5], torch.zeros(WC)), name  # no valid token: zeros, no NaN
        assert weights[4, 0].item() == 1.0 and (weights[4, 1:] == 0).all(), name
        assert_weight_invariants(weights, mask)
    assert fallback_rows(scores, entropies, mask).tolist() == [False] * WB


def test_all_padding_batch_is_zero():
    zeros = torch.zeros(2, 4)
    mask = torch.zeros(2, 4, dtype=torch.bool)
    nan = torch.full((2, 4), float("nan"))
    for weights in _all_weight_fns(nan, nan, mask, torch.ones(2, dtype=torch.bool)).values():
        assert torch.equal(weights, zeros)
    assert fallback_rows(nan, nan, mask, torch.ones(2, dtype=torch.bool)).tolist() == [False, False]


def test_constant_scores_and_entropies_give_uniform_weights():
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 5:] = False
    scores = torch.full((2, 7), 0.37)
    entropies = torch.full((2, 7), 1.25)
    for name, weights in _all_weight_fns(scores, entropies, mask).items():
        torch.testing.assert_close(weights, mask.float(), atol=1e-6, rtol=0, msg=name)


def test_constant_entropies_and_constant_scores_separately():
    scores, entropies, mask = make_weight_inputs(5)
    flat_entropy = torch.full_like(entropies, 2.0)
    ref = ref_pepo(scores, flat_entropy, mask, 0.5, 1.8)
    got = pepo_token_weights(scores, flat_entropy, mask, 0.5, 1.8)
    assert (got.double() - ref).abs().max().item() <= 1e-5
    # constant entropy: exploration-only is uniform
    torch.testing.assert_close(exploration_only_weights(flat_entropy, mask, 1.8), mask.float(), atol=1e-6, rtol=0)
    # constant scores: perception-only is uniform; PEPO still follows the literal formula (the gate
    # moves VS * gate with the entropy unless VS = 0)
    flat_scores = torch.full_like(scores, 0.4)
    torch.testing.assert_close(perception_only_weights(flat_scores, mask, 1.8), mask.float(), atol=1e-6, rtol=0)
    got = pepo_token_weights(flat_scores, entropies, mask, 0.5, 1.8)
    assert (got.double() - ref_pepo(flat_scores, entropies, mask, 0.5, 1.8)).abs().max().item() <= 1e-5
    zero_scores = torch.zeros_like(scores)
    got = pepo_token_weights(zero_scores, entropies, mask, 0.5, 1.8)
    torch.testing.assert_close(got, mask.float(), atol=1e-6, rtol=0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("where", ["scores", "entropies"])
def test_non_finite_inputs_fall_back_to_uniform(bad, where):
    scores, entropies, mask = make_weight_inputs(6)
    target = scores if where == "scores" else entropies
    target[0, 4] = bad  # a valid token: row 0 falls back
    target[1, 8] = bad  # padding of row 1: ignored
    expected = [True] + [False] * (WB - 1)
    assert fallback_rows(scores, entropies, mask).tolist() == expected
    weights = pepo_token_weights(scores, entropies, mask)
    assert_weight_invariants(weights, mask)
    assert torch.equal(weights[0], torch.ones(WC))
    ref = ref_pepo(scores, entropies, mask, 0.05, 1.8)
    assert (weights.double() - ref).abs().max().item() <= 1e-5
    if where == "entropies":
        ex = exploration_only_weights(entropies, mask, 1.8)
        assert torch.equal(ex[0], torch.ones(WC))
        assert (ex.double() - ref_exploration(entropies, mask, 1.8)).abs().max().item() <= 1e-5
    else:
        per = perception_only_weights(scores, mask, 1.8)
        assert torch.equal(per[0], torch.ones(WC))
        assert_weight_invariants(per, mask)


def test_no_image_rows_get_uniform_weights_and_are_flagged():
    scores, entropies, mask = make_weight_inputs(7)
    vision_mask = torch.ones(WB, 20, dtype=torch.bool)
    vision_mask[2] = False
    vision_mask[5] = False  # also no valid token: stays all zero, not flagged
    no_image = rows_without_image(vision_mask)
    assert no_image.tolist() == [False, False, True, False, False, True]
    assert fallback_rows(scores, entropies, mask, no_image).tolist() == [False, False, True, False, False, False]
    for name in ("pepo", "perception"):
        weights = _all_weight_fns(scores, entropies, mask, no_image)[name]
        assert torch.equal(weights[2], mask[2].float()), name
        assert torch.equal(weights[5], torch.zeros(WC)), name
        assert not torch.allclose(weights[0], torch.ones(WC)), name
        assert_weight_invariants(weights, mask)


def test_weights_gradients_are_finite_with_fallback_rows():
    scores, entropies, mask = make_weight_inputs(8)
    scores[0, 2] = float("nan")
    entropies[3, 1] = float("inf")
    scores.requires_grad_(True)
    entropies.requires_grad_(True)
    weights = pepo_token_weights(scores, entropies, mask, gate_alpha=0.5)
    (weights * torch.arange(WC)).sum().backward()
    assert torch.isfinite(scores.grad).all() and torch.isfinite(entropies.grad).all()
    assert scores.grad[1].abs().sum() > 0  # a normal row is differentiable
    assert (scores.grad[0] == 0).all()  # a fallback row is constant


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda s, e, m: pepo_token_weights(s, e, m, gate_temperature=0.0), "gate_temperature"),
        (lambda s, e, m: pepo_token_weights(s, e, m, gate_temperature=-1.0), "gate_temperature"),
        (lambda s, e, m: pepo_token_weights(s, e, m, gate_alpha=-0.1), "gate_alpha"),
        (lambda s, e, m: pepo_token_weights(s, e[:, :-1], m), "entropies"),
        (lambda s, e, m: pepo_token_weights(s, e, m[:-1]), "completion_mask"),
        (lambda s, e, m: pepo_token_weights(s[0], e, m), "vision_scores"),
        (lambda s, e, m: pepo_token_weights(s, e, m, no_image_rows=torch.zeros(2, dtype=torch.bool)), "no_image_rows"),
        (lambda s, e, m: perception_only_weights(s, m, 0.0), "gate_temperature"),
        (lambda s, e, m: exploration_only_weights(e, m, float("nan")), "gate_temperature"),
        (lambda s, e, m: exploration_only_weights(e, m[:, :3], 1.0), "completion_mask"),
        (lambda s, e, m: fallback_rows(s, e, m.T), "completion_mask"),
    ],
)
def test_weight_validation(call, match):
    scores, entropies, mask = make_weight_inputs(9)
    with pytest.raises(ValueError, match=match):
        call(scores, entropies, mask)


# --------------------------------------------------------------------------------------------
# Schedule
# --------------------------------------------------------------------------------------------


def test_scheduled_weights_formula():
    weights = torch.tensor([[0.0, 0.5, 2.5], [1.0, 3.0, 0.0]])
    assert torch.equal(scheduled_weights(weights, 0.0), torch.ones(2, 3))
    assert torch.equal(scheduled_weights(weights, 1.0), weights)
    expected = torch.tensor([[0.75, 0.875, 1.375], [1.0, 1.5, 0.75]])  # 0.75 + 0.25 * w
    torch.testing.assert_close(scheduled_weights(weights, 0.25), expected, atol=1e-7, rtol=0)
    assert torch.equal(scheduled_weights(weights, 1), weights)


@pytest.mark.parametrize("progress", [-0.01, 1.01, float("nan"), float("inf"), "0.5", None, True])
def test_scheduled_weights_rejects_bad_progress(progress):
    with pytest.raises(ValueError, match="progress"):
        scheduled_weights(torch.ones(1, 2), progress)
