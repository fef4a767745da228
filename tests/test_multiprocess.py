"""A real 2-process data-parallel PEPO_D run on CPU (torchrun, gloo): the CLI users launch, on informative groups."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

# Runs `pepo demo` (pepo.cli.main) under torchrun, with PEPOTrainer.train wrapped to save each rank's trainable
# parameters before and after RL, so the test can compare the two processes' models.
DRIVER = """
import sys
import torch
from pepo.cli import main
from pepo.trainer import PEPOTrainer

out, argv = sys.argv[1], sys.argv[2:]
train = PEPOTrainer.train

def recorded_train(self, *args, **kwargs):
    def save(tag):
        params = {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}
        torch.save(params, f"{out}/rank{self.accelerator.process_index}_{tag}.pt")
    save("before")
    result = train(self, *args, **kwargs)
    save("after")
    return result

PEPOTrainer.train = recorded_train
sys.exit(main(argv))
"""


def test_two_process_pepo_d_run_trains_identical_replicas(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    # 30 warm-start steps (target never reached; the model then answers some items right): sampled answers differ
    # within about half the groups of 4, so dynamic sampling finds informative groups. (An untrained model scores 0
    # everywhere: every group would be dropped and the batch filled with zero-advantage groups.)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(driver), str(out),
        "demo", "--num_train", "120", "--num_test", "16", "--warm_start_steps", "30", "--warm_start_target", "1.0",
        "--warm_start_min_accuracy", "0", "--max_steps", "2", "--logging_steps", "1",
        "--per_device_train_batch_size", "8", "--num_generations", "4", "--method", "pepo_d",
        "--max_dynamic_sampling_rounds", "6",
        "--mask_truncated_completions", "false", "--output_dir", str(out),
        "--log_token_views_every", "1", "--token_views_rollouts", "8",  # token views: both ranks' rollouts gathered
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "dynamic_sampling/rounds" in r]
    assert [r["step"] for r in steps] == [1, 2]  # one writer, not one per process
    for r in steps:
        # Counts are summed over the 2 processes, each needing 2 groups of 4 per step.
        assert 1 <= r["dynamic_sampling/rounds"] <= 6
        assert r["dynamic_sampling/filled_groups"] < 4, r  # informative groups train (not only filled ones) ...
        assert r["grad_norm"] > 0  # ... so the policy gradient is not zero
        assert "pepo/weight_p100" in r
    assert sum(r["dynamic_sampling/dropped_groups"] for r in steps) > 0  # and equal-reward groups were dropped
    before = [torch.load(out / f"rank{k}_before.pt") for k in (0, 1)]
    after = [torch.load(out / f"rank{k}_after.pt") for k in (0, 1)]
    assert before[0].keys() == after[1].keys() and len(before[0]) > 0
    for name in before[0]:
        assert torch.equal(before[0][name], before[1][name]), name  # the same warm start on both processes
        assert torch.equal(after[0][name], after[1][name]), name  # DDP kept the replicas identical
    changed = [n for n in before[0] if not torch.equal(before[0][n], after[0][n])]
    assert len(changed) > len(before[0]) // 2, f"only {len(changed)} of {len(before[0])} tensors changed"
    assert (out / "checkpoint" / "model.safetensors").is_file()
    assert json.loads((out / "results.json").read_text())["method"] == "pepo_d"
    from pepo.analysis.token_views import read_views

    views = read_views(out / "token_views")
    assert [v["step"] for v in views] == [1, 2]  # one writer; every rank joined the gather (no hang)
    for view in views:
        assert {r["rank"] for r in view["rollouts"]} == {0, 1}, [r["rank"] for r in view["rollouts"]]
