"""benchmarks/method_overhead.py measures every method on the same trainer, and only PAPO / VPPO run the extra forward."""

from __future__ import annotations

from benchmarks import method_overhead


def test_method_overhead_runs_every_method_side_by_side(capsys):
    result = method_overhead.main(["--steps", "1", "--repeats", "1", "--prompts", "2", "--generations", "4"])
    methods = result["methods"]
    assert list(methods) == ["grpo", "pepo", "papo_g", "papo_d", "vppo", "vgpo", "clip_cov"]
    assert all(r["step_s"] > 0 and r["train_s"] > 0 and r["peak_bytes"] > 0 for r in methods.values())
    # the masked-image forward ran (and was timed by the trainer) for exactly the perception-aware methods
    assert [m for m, r in methods.items() if r["masked_forward_ms"] is not None] == ["papo_g", "papo_d", "vppo"]
    assert all(methods[m]["masked_forward_ms"] > 0 for m in ("papo_g", "papo_d", "vppo"))
    out = capsys.readouterr().out
    assert "| vgpo |" in out and "| clip_cov |" in out
    assert "| method | step (ms) | vs GRPO |" in out and "| vppo |" in out and "tiny Qwen2.5-VL" in out
