"""No host syncs in PEPO's hooks, weighting and logged statistics (issue 21, item 1), proved on a CPU.

Two independent checks. (1) ``torch.compile(fullgraph=True)`` of every per-layer reduction and of the
weighting: reading a device value on the host (``.item()``, ``.tolist()``, an ``if`` on a tensor) is
a graph break, and ``fullgraph=True`` turns a graph break into an error. The ``eager`` backend is
enough for that (the graph is captured by dynamo whatever the backend; inductor would add a minute
of code generation per function here). Dynamo (torch 2.13) does trace ``nonzero`` and boolean-mask
indexing without a break, although on a GPU they sync, so (2) counts the syncs that are made
(:mod:`benchmarks._syncs`, which sees those ops too): a hooked forward makes at most one more than
a plain one, and a PEPO training micro-batch at most one more than GRPO's (the image span),
whatever the number of layers.
"""

from __future__ import annotations

import math

import pytest
import torch

from benchmarks._syncs import count_host_syncs
from pepo.hooks import VisualScoreCapture
from pepo.token_stats import PERCENTILES, PendingTokenStats, micro_batch_stats, weight_percentiles
from pepo.weights import (
    SCORE_TYPES,
    exploration_only_weights,
    fallback_rows,
    image_span,
    layer_similarity,
    pepo_token_weights,
    perception_only_weights,
    rows_without_image,
    scheduled_weights,
    token_entropy,
)

B, S, D, C = 3, 48, 16, 10


def _compiled(fn):
    torch._dynamo.reset()
    return torch.compile(fn, fullgraph=True, backend="eager")


def _layer():
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(B, S, D, generator=gen)
    mask = torch.zeros(B, S, dtype=torch.bool)
    mask[0, 4:12] = True
    mask[1, 6:9] = True
    mask[1, 15:20] = True  # two images in one row
    hidden[2, 13, 0] = float("nan")  # a non-image, non-completion token: must not reach any score
    hidden[0, 30, 1] = float("inf")  # a text token inside no image
    return hidden, mask


def test_image_span_is_read_once_and_describes_the_mask():
    _, mask = _layer()
    with count_host_syncs() as syncs:
        span = image_span(mask)
    assert sum(syncs.values()) == 1
    assert span == (4, 20, 8)  # first image position, one past the last, most image tokens of a row
    assert image_span(torch.zeros(2, 5, dtype=torch.bool)) == (0, 0, 0)


@pytest.mark.parametrize("score_type", SCORE_TYPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_layer_reduction_compiles_without_graph_break(score_type, dtype):
    hidden, mask = _layer()
    hidden = hidden.to(dtype)
    span = image_span(mask)
    got = _compiled(layer_similarity)(hidden, mask, C, score_type, span=span)
    expected = layer_similarity(hidden, mask, C, score_type)  # reads the span itself
    assert torch.equal(got, expected)
    # the branch-free guard: the NaN / inf outside image and completion tokens reached no score
    assert torch.isfinite(got).all()
    assert torch.equal(got[2], torch.zeros(C))  # row 2 has no image


def test_without_a_span_the_reduction_does_sync():
    """The check above can fail: a host sync is a graph break that fullgraph=True refuses."""
    hidden, mask = _layer()
    with pytest.raises(Exception):
        _compiled(layer_similarity)(hidden, mask, C, "cosine")


@pytest.mark.parametrize("score_type", ["cosine", "l2"])
def test_each_hook_reduction_compiles_and_a_hooked_forward_adds_at_most_one_sync(tiny_vlm, rl_rows, score_type):
    from pepo.eval.generation import encode_prompts
    from pepo.models.loading import image_token_id

    model, processor = tiny_vlm
    rows = rl_rows.select(range(2))
    batch = encode_prompts(processor, rows["prompt"], rows["images"], ["<answer>1</answer>", "no"])
    inputs = {k: v for k, v in batch.items() if k != "prompt_lengths"}
    vision_mask = inputs["input_ids"] == image_token_id(model, processor)
    capture = VisualScoreCapture(model, score_type)
    n_states = capture.num_hidden_states
    with torch.no_grad():
        with count_host_syncs() as plain:
            model(**inputs)
        with count_host_syncs() as hooked, capture.record(vision_mask, 4):
            model(**inputs)
        scores = capture.scores
        # what each hook runs, on a hidden state of the batch's shape, inside record()
        hidden = torch.randn(vision_mask.shape[0], vision_mask.shape[1], model.config.text_config.hidden_size)
        with capture.record(vision_mask, 4):
            compiled = _compiled(capture.layer_scores)(hidden, slice(0, 2))
            eager = capture.layer_scores(hidden, slice(0, 2))
            model(**inputs)  # record() insists on one forward over the rows
    extra = sum(hooked.values()) - sum(plain.values())
    assert n_states >= 3 and 0 <= extra <= 1, (dict(plain), dict(hooked))  # was 2-5 per hidden state
    assert torch.isfinite(scores).all() and scores.abs().sum() > 0
    assert torch.equal(compiled, eager)


def _weight_inputs():
    gen = torch.Generator().manual_seed(1)
    scores = torch.rand(4, C, generator=gen) * 2 - 1
    entropies = torch.rand(4, C, generator=gen) * 3
    mask = torch.ones(4, C, dtype=torch.bool)
    mask[1, 6:] = False
    mask[3] = False  # an empty row
    scores[2, 1] = float("nan")  # row 2 falls back to uniform weights
    no_image = torch.tensor([False, True, False, False])
    return scores, entropies, mask, no_image


def test_weighting_compiles_without_graph_break():
    scores, entropies, mask, no_image = _weight_inputs()
    logits = torch.randn(4, C, 50)
    logits[0, 0, :10] = -math.inf
    calls = [
        (pepo_token_weights, (scores, entropies, mask, 0.05, 1.8, no_image)),
        (perception_only_weights, (scores, mask, 1.8, no_image)),
        (exploration_only_weights, (entropies, mask, 1.8)),
        (fallback_rows, (scores, entropies, mask, no_image)),
        (rows_without_image, (torch.rand(4, 7) > 0.5,)),
        (scheduled_weights, (entropies, 0.3)),
        (token_entropy, (logits,)),
    ]
    for fn, args in calls:
        assert torch.equal(_compiled(fn)(*args), fn(*args)), fn.__name__


def test_logged_statistics_compile_without_graph_break():
    scores, entropies, mask, no_image = _weight_inputs()
    weights = pepo_token_weights(scores, entropies, mask, no_image_rows=no_image)
    fallback = fallback_rows(scores, entropies, mask, no_image)

    def both(m, s, e, w, f):
        stats = micro_batch_stats(m, s, e, w, f)
        return stats.sums, stats.weights

    def same(a, b):  # NaN marks padding in the weights
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)

    got = _compiled(both)(mask, scores, entropies, weights, fallback)
    for a, b in zip(got, both(mask, scores, entropies, weights, fallback)):
        same(a, b)
    rows = torch.stack([got[1], got[1].flip(0)])
    same(_compiled(weight_percentiles)(rows), weight_percentiles(rows))


def _per_micro_batch_reference(mask, scores, entropies, weights, fallback) -> dict[str, float]:
    """The statistics as the trainer logged them before issue 21, one micro-batch at a time (with syncs)."""
    maskf = mask.float()
    tokens = max(maskf.sum().item(), 1.0)
    out = {}
    if scores is not None:
        out["pepo/vs_mean"] = (torch.where(torch.isfinite(scores), scores, 0.0) * maskf).sum().item() / tokens
    if entropies is not None:
        out["pepo/entropy_mean"] = (entropies.float() * maskf).sum().item() / tokens
    if weights is not None:
        out["pepo/uniform_fallback_rows"] = fallback.sum().float().item()
        valid = weights[mask].float()
        if valid.numel():
            qs = torch.quantile(valid, torch.tensor([p / 100 for p in PERCENTILES]))
            out.update({f"pepo/weight_p{p}": q for p, q in zip(PERCENTILES, qs.tolist())})
    return out


def test_pending_statistics_give_the_per_micro_batch_numbers():
    from collections import defaultdict

    scores, entropies, mask, no_image = _weight_inputs()
    weights = pepo_token_weights(scores, entropies, mask, no_image_rows=no_image)
    fallback = fallback_rows(scores, entropies, mask, no_image)
    half = (mask[:2, :7], scores[:2, :7], entropies[:2, :7], weights[:2, :7], fallback[:2])  # another shape
    empty = (torch.zeros_like(mask), scores, entropies, torch.zeros_like(weights), fallback & False)
    micro_batches = [
        ("train", (mask, scores, entropies, weights, fallback)),
        ("train", (mask, None, entropies, None, None)),  # e.g. GRPO with token statistics
        ("eval", half),
        ("train", empty),  # no valid token: no percentiles, as before
    ]
    pending = PendingTokenStats(max_pending=5)
    with count_host_syncs() as syncs:
        due = [pending.add(mode, micro_batch_stats(*args)) for mode, args in micro_batches]
    assert sum(syncs.values()) == 0 and due == [False] * 4  # nothing read back per micro-batch
    metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    with count_host_syncs() as syncs:
        pending.flush(metrics)
    assert sum(syncs.values()) == 1 and len(pending) == 0  # one read for all four
    expected = {"train": defaultdict(list), "eval": defaultdict(list)}
    for mode, args in micro_batches:
        for name, value in _per_micro_batch_reference(*args).items():
            expected[mode][name].append(value)
    assert metrics == expected  # the very same floats
    assert "pepo/weight_p0" in metrics["eval"] and len(metrics["train"]["pepo/weight_p0"]) == 1
    assert PendingTokenStats(max_pending=1).add("train", micro_batch_stats(*half)) is True


def test_pending_statistics_pool_every_process():
    """With P processes the sums add up and each micro-batch's percentiles are over all processes' weights."""
    from collections import defaultdict

    scores, entropies, mask, no_image = _weight_inputs()
    weights = pepo_token_weights(scores, entropies, mask, no_image_rows=no_image)
    fallback = fallback_rows(scores, entropies, mask, no_image)
    ours = [(mask, scores, entropies, weights, fallback), (mask[:2], scores[:2], entropies[:2], weights[:2], fallback[:2])]
    theirs = [(a[1:], b[1:], c[1:], d[1:] * 2, e[1:]) for a, b, c, d, e in ours]  # the other process's rows
    other = PendingTokenStats()
    for args in theirs:
        other.add("train", micro_batch_stats(*args))
    other_sums = torch.stack([s.sums for _, s in other._pending])
    other_rows = [s.weights for _, s in other._pending]

    def gather_rows(local):  # process-major, padded with NaN to the longest row, as accelerate does
        width = max(local.shape[1], max(r.numel() for r in other_rows))
        remote = torch.full((len(other_rows), width), math.nan)
        for i, r in enumerate(other_rows):
            remote[i, : r.numel()] = r
        local = torch.cat([local, torch.full((local.shape[0], width - local.shape[1]), math.nan)], dim=1)
        return torch.cat([local, remote])

    pending = PendingTokenStats()
    for args in ours:
        pending.add("train", micro_batch_stats(*args))
    metrics = {"train": defaultdict(list)}
    pending.flush(metrics, reduce_sum=lambda t: t + other_sums, gather_rows=gather_rows)
    for i, (a, b) in enumerate(zip(ours, theirs)):
        pooled = tuple(torch.cat([x, y]) for x, y in zip(a, b))  # one process holding both's rows
        for name, value in _per_micro_batch_reference(*pooled).items():
            assert metrics["train"][name][i] == pytest.approx(value, rel=1e-6, abs=1e-7), (name, i)


def test_pepo_micro_batch_adds_at_most_one_sync_over_grpo():
    """The whole training path (hooks, weights, token statistics) on the trainer: PEPO's micro-batch makes at most
    one host sync more than GRPO's on the same batch (the image span), not a few per layer."""
    from benchmarks._trainer_setup import scratch_dir, step_trainer, use_method

    with scratch_dir() as tmp:
        trainer, _ = step_trainer("pepo", tmp, prompts=2, generations=4)
        capture = trainer._capture
        batch = next(iter(trainer.get_train_dataloader()))
        torch.manual_seed(0)
        inputs = trainer._prepare_inputs(batch)
        counts = {}
        for method in ("grpo", "pepo", "grpo", "pepo"):
            use_method(trainer, capture, method)
            with count_host_syncs() as syncs:
                trainer.compute_loss(trainer.model, inputs).backward()
            counts[method] = sum(syncs.values())
        assert len(trainer._token_stats) > 0  # the statistics wait for the logging step
        trainer.log({})
        assert len(trainer._token_stats) == 0 and trainer._metrics["train"] == {}  # flushed, then logged
        logged = trainer.state.log_history[-1]
    print("host syncs per micro-batch (loss + backward):", counts)
    assert 0 <= counts["pepo"] - counts["grpo"] <= 1, counts
    assert {"pepo/vs_mean", "pepo/weight_p60", "pepo/uniform_fallback_rows"} <= set(logged)


@pytest.mark.parametrize("score_type", ["cosine", "dot"])
def test_in_graph_reduction_compiles_and_keeps_non_image_nan_out(score_type):
    """With the weights in the autograd graph the reduction masks the weighted terms instead (no masked copy
    of the layer kept for backward); it is sync-free too, and its gradient is finite."""
    hidden, mask = _layer()
    hidden.requires_grad_(True)
    span = image_span(mask)
    got = _compiled(layer_similarity)(hidden, mask, C, score_type, span=span)
    expected = layer_similarity(hidden, mask, C, score_type)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert torch.isfinite(got).all()
    with torch.no_grad():
        torch.testing.assert_close(got, layer_similarity(hidden, mask, C, score_type), rtol=1e-5, atol=1e-6)
    got.sum().backward()
    assert torch.isfinite(hidden.grad[:2, :S - C - 20]).all()  # image tokens' gradients stay finite
