"""A real 2-process data-parallel PEPO_D run on CPU (torchrun, gloo): the same CLI users launch."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def test_two_process_pepo_d_run(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
        "-m", "pepo.cli", "demo", "--num_train", "120", "--num_test", "16", "--warm_start_steps", "4",
        "--warm_start_target", "0", "--warm_start_min_accuracy", "0", "--max_steps", "2", "--logging_steps", "1",
        "--per_device_train_batch_size", "8", "--num_generations", "4", "--method", "pepo_d",
        "--output_dir", str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "dynamic_sampling/rounds" in r]
    assert [r["step"] for r in steps] == [1, 2]  # one writer, not one per process
    for r in steps:
        # An untrained model scores 0 everywhere: every group is dropped in each of the 3 rounds, on both
        # processes (2 groups each), and the batch is filled. Counts are summed over processes.
        assert r["dynamic_sampling/rounds"] == 3.0
        assert r["dynamic_sampling/dropped_groups"] == 2 * 3 * 2
        assert r["dynamic_sampling/filled_groups"] == 2 * 2
        assert "pepo/weight_p100" in r
    assert (out / "checkpoint" / "model.safetensors").is_file()
    assert json.loads((out / "results.json").read_text())["method"] == "pepo_d"
