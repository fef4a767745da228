"""The benchmark scripts run, compare like with like, and the CPU targets of issue 6 hold on the tiny model."""

from __future__ import annotations

import pytest
import torch

from benchmarks import peak_memory, step_overhead
from benchmarks.similarity_kernel import bench


def test_kernel_benchmark_compares_equal_results_and_measures_the_matrix():
    V, C = 512, 256
    r = bench(1, 2, V, C, 64, "cpu", torch.float32, repeats=1)
    assert r["max_abs_diff"] < 1e-5  # the release formulation and pepo compute the same scores
    assert r["release_alloc_MB"] * 2**20 >= C * V * 4  # it does build the C x V matrix
    assert r["pepo_alloc_MB"] * 2**20 < C * V * 4  # pepo never does


def test_kernel_work_is_linear_in_v_plus_c_and_it_is_faster():
    """The release's formulation multiplies C x D by D x V per layer and row (2 L B C V D flops); pepo's stays within
    a few flops per (token, layer, feature): O(L B (V + C) D). Flop counts are exact and immune to machine load,
    unlike the timings (on this shared 2-core machine the fastest-of-5 ratio still swings by 4x); the timing
    assertion is only that pepo is faster at all where the matrices hold half a million entries."""
    from benchmarks.similarity_kernel import matmul_flops, release_formulation
    from pepo.weights import visual_similarity

    B, L, V, C, D = 1, 2, 1024, 512, 128
    gen = torch.Generator().manual_seed(0)
    S = V + C + 32
    hidden = [torch.randn(B, S, D, generator=gen) for _ in range(L)]
    mask = torch.zeros(B, S, dtype=torch.bool)
    mask[:, 16 : 16 + V] = True
    with torch.no_grad():
        ours = matmul_flops(lambda: visual_similarity(hidden, mask, C))
        release = matmul_flops(lambda: release_formulation(hidden, mask, C))
    assert release >= 2 * L * B * C * V * D
    assert 0 < ours <= 8 * L * B * (V + C) * D
    r = bench(B, L, V, C, D, "cpu", torch.float32, repeats=5)
    assert r["speedup_of_minima"] > 1, r


def test_step_overhead_runs_grpo_and_pepo_on_the_same_trainer(capsys):
    r = step_overhead.main(["--steps", "1"])
    assert r["grpo"] > 0 and r["pepo"] > 0
    assert 0 < r["own"] < 0.05 * r["pepo"]  # PEPO's hooks + weights: a small part of the step (0.68% measured)
    out = capsys.readouterr().out
    assert "tiny Qwen2.5-VL" in out and "overhead (t_pepo - t_grpo) / t_grpo" in out


def test_peak_memory_pepo_never_holds_the_hidden_state_stack():
    """On the tiny model PEPO's own tensors are kilobytes next to a ~110 MB step, so "PEPO <= GRPO + 0.5%" would
    hold whatever it did. The bound that means something: PEPO's extra peak stays under a quarter of ONE copy
    of the hidden states it scores (L + 1 layers x B x S x D float32), which output_hidden_states=True, or a
    hook that kept each layer's output, would hold for the whole backward."""
    import argparse

    from benchmarks._trainer_setup import add_model_arguments, model_settings

    parser = argparse.ArgumentParser()
    add_model_arguments(parser)
    _, results, shape = peak_memory.measure(model_settings(parser.parse_args([])), repeats=1)
    grpo = results["GRPO (PEPO code path off)"]
    stack = shape["L1"] * shape["B"] * shape["S"] * shape["D"] * 4
    assert stack > 0.02 * grpo  # the stack is not itself lost in the noise (measured noise: ~0.1 MB)
    for name in ("PEPO (detached weights)", "PEPO, weights in the graph"):
        assert results[name] - grpo < stack / 4, (name, results[name] - grpo, stack)
    assert results["PEPO (detached weights)"] <= grpo * 1.005  # issue 6's target, for the record


@pytest.mark.slow
def test_3b_sized_path_builds_the_real_shapes(capsys):
    # the 3B configuration with one layer per tower, so that it fits a CPU test
    r = step_overhead.main(["--size", "3b", "--layers", "1", "--vision_depth", "1", "--prompts", "1",
                            "--generations", "2", "--completion_length", "2", "--image_size", "112", "--steps", "1"])
    assert r["grpo"] > 0 and r["pepo"] > 0
    assert "3b Qwen2.5-VL" in capsys.readouterr().out
