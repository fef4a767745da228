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


def test_gpu_suite_cpu_path_writes_every_section(tmp_path):
    """The GPU suite's own code path, on the tiny model (--device cpu --tiny), so that it cannot rot before a GPU runs it."""
    import json

    from benchmarks import gpu_suite

    out = tmp_path / "suite"
    results = gpu_suite.main(["--device", "cpu", "--tiny", "--out", str(out)])
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(results, default=str))
    header = results["header"]
    assert header["versions"]["trl"] and header["versions"]["torch"] and header["dtype"] == "float32"
    kernel = results["kernel"]["rows"]
    assert {r["dtype"] for r in kernel} == {"bfloat16", "float32"}
    assert all(r["max_abs_diff"] < (1e-2 if r["dtype"] == "bfloat16" else 1e-5) for r in kernel), kernel
    off, on = results["steps_gc_off"], results["steps_gc_on"]
    assert off["methods"] == list(gpu_suite.ALL_METHODS) and not off["gradient_checkpointing"]
    assert on["methods"] == list(gpu_suite.GC_ON_METHODS) and on["gradient_checkpointing"]
    for section in (off, on):
        for method in section["methods"]:
            assert section["step_s"][method] and min(section["step_s"][method]) > 0
            assert section["train_s"][method] and min(section["train_s"][method]) > 0
        assert section["peak_bytes"]["grpo"] > 0 and section["peak_bytes"]["pepo_weights_in_graph"] > 0
        assert section["pepo_own_ms"] and section["shape"]["image_tokens_per_row"] > 0
    assert set(off["masked_forward_ms"]) == {"papo_g", "papo_d", "vppo"}  # their extra forward ran
    sync = results["sync_check"]
    assert sync["sync_free"] and sync["guarded"] == {"hooks": True, "weighting_and_statistics": True}, sync
    passes = sync["syncs_per_training_pass"]
    assert 0 <= passes["pepo"] - passes["grpo"] <= 1 and sync["syncs_per_statistics_flush"] == 1, sync
    text = (out / "summary.md").read_text()
    for heading in ("Similarity kernel", "gradient checkpointing off", "gradient checkpointing on", "Host syncs"):
        assert heading in text


def test_gpu_suite_rounds_stop_at_the_budget_but_not_before_the_minimum():
    from benchmarks.gpu_suite import Clock, _interleaved

    calls = []
    late = Clock(minutes=0.0)  # every share's deadline has passed
    times = _interleaved(("a", "b"), lambda m: calls.append(m) or 1.0, "kernel", late, min_rounds=2, max_rounds=9)
    assert calls == ["a", "b", "b", "a"]  # two rounds, the second in reverse order
    assert times == {"a": [1.0, 1.0], "b": [1.0, 1.0]}
    calls.clear()
    _interleaved(("a",), lambda m: calls.append(m) or 1.0, "kernel", Clock(minutes=60.0), min_rounds=1, max_rounds=3)
    assert calls == ["a"] * 3  # time left: up to max_rounds
