"""Seed studies: shared warm starts, RL-only re-seeding, paired comparisons (literal references)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from pepo.analysis import study
from pepo.analysis.study import _sign_flip_p, paired_comparison, report, run_name
from pepo.config import demo_recipe_path, load_yaml, parse_train_args
from pepo.run import run_training

TINY = ["--num_train", "40", "--num_test", "8", "--warm_start_steps", "40", "--warm_start_min_accuracy", "0",
        "--warm_start_retries", "1", "--max_steps", "2", "--per_device_train_batch_size", "8",
        "--num_generations", "4", "--logging_steps", "1"]


def _train(tmp_path: Path, name: str, *extra: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    logs: list[str] = []
    script, args = parse_train_args([*TINY, "--output_dir", str(tmp_path / name), *extra],
                                    base=load_yaml(demo_recipe_path()))
    run_training(script, args, log=logs.append)
    from safetensors.torch import load_file

    return load_file(str(tmp_path / name / "checkpoint" / "model.safetensors")), logs


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_shared_warm_start_and_rl_seed(tmp_path):
    ws = tmp_path / "ws"
    plain, _ = _train(tmp_path, "plain")
    first, logs1 = _train(tmp_path, "first", "--warm_start_dir", str(ws))
    second, logs2 = _train(tmp_path, "second", "--warm_start_dir", str(ws))
    assert (ws / "warm_start.json").is_file()
    from safetensors.torch import load_file

    assert not _same(first, load_file(str(ws / "model.safetensors")))  # RL moved the weights
    assert not any("reusing" in line for line in logs1) and any("reusing" in line for line in logs2)
    # a saved-and-reloaded warm start trains exactly like the one kept in memory
    assert _same(plain, first) and _same(first, second)
    results = json.loads((tmp_path / "second" / "results.json").read_text())
    assert results["rl_seed"] == 0 and results["environment"]["torch"] == torch.__version__
    # --rl_seed changes the RL stage only: same warm start (same accuracy before RL), different weights after
    other, _ = _train(tmp_path, "other", "--warm_start_dir", str(ws), "--rl_seed", "7")
    other_results = json.loads((tmp_path / "other" / "results.json").read_text())
    assert other_results["before_rl"] == results["before_rl"] and other_results["rl_seed"] == 7
    assert not _same(first, other)
    # a warm start made with other options is refused, naming the option
    with pytest.raises(ValueError, match="warm_start_steps"):
        _train(tmp_path, "bad", "--warm_start_dir", str(ws), "--warm_start_steps", "41")


def test_sign_flip_p_literal():
    # all 2^3 sign patterns of (1, 2, 3): |sums| = 6,4,2,0,0,2,4,6 -> P(|S| >= 6) = 2/8
    assert _sign_flip_p([1.0, 2.0, 3.0]) == pytest.approx(0.25)
    assert _sign_flip_p([1.0, -1.0]) == pytest.approx(1.0)


def _fake_run(folder: Path, method: str, seed: int, rl_seed: int, before: float, after: float) -> None:
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({
        "method": method, "seed": seed, "rl_seed": rl_seed, "seconds": 100.0,
        "before_rl": {"overall": before, "n": 600.0}, "after_rl": {"overall": after, "n": 600.0}}))


def test_paired_comparison_and_report(tmp_path):
    # gains (points): grpo 10, 2, 6; pepo 12, 6, 5 -> differences 2, 4, -1: mean 5/3, sd 2.5166, s.e. 1.4530
    for seed, (g, p) in enumerate([(0.10, 0.12), (0.02, 0.06), (0.06, 0.05)]):
        _fake_run(tmp_path / run_name("grpo", seed, 0), "grpo", seed, seed, 0.40, 0.40 + g)
        _fake_run(tmp_path / run_name("pepo", seed, 0), "pepo", seed, seed, 0.40, 0.40 + p)
    c = paired_comparison(study.load_results(sorted(tmp_path.glob("grpo_*"))),
                          study.load_results(sorted(tmp_path.glob("pepo_*"))))
    assert c["n"] == 3 and c["b_better"] == 2
    assert c["mean_diff"] == pytest.approx(5 / 3) and c["stderr"] == pytest.approx(1.45297, abs=1e-4)
    assert c["p_sign_flip"] == pytest.approx(0.5)  # |S| >= 5 in 4 of the 8 sign patterns of (2, 4, -1)
    for name, seconds in (("grpo_s0", 0.5), ("pepo_s0", 0.6)):  # TRL's step_time: 0.5 s vs 0.6 and 0.8 s
        lines = [{"step": 10, "step_time": seconds}, {"step": 20, "step_time": seconds + 0.2 * (name == "pepo_s0")}]
        (tmp_path / name / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    assert study.mean_step_time(tmp_path / "pepo_s0") == pytest.approx(0.7)
    text = report(tmp_path, baseline="grpo")
    assert "| pepo | seed | 3 | +7.7 ± 2.2 | 0 | 0.70 | 1.40x |" in text
    assert "### pepo, RL seed = seed" in text and "+1.67 ± 1.45" in text and "2/3" in text
    assert "runs that lost accuracy: 0" in text
    # an explicit pair besides the baseline: dapo gains 4, 4, 4; pepo_d 5, 3, 7 -> differences 1, -1, 3
    for seed, (d, e) in enumerate([(0.04, 0.05), (0.04, 0.03), (0.04, 0.07)]):
        _fake_run(tmp_path / run_name("dapo", seed, 0), "dapo", seed, seed, 0.40, 0.40 + d)
        _fake_run(tmp_path / run_name("pepo_d", seed, 0), "pepo_d", seed, seed, 0.40, 0.40 + e)
    text = report(tmp_path, baseline="grpo", pairs=[("dapo", "pepo_d")])
    rows = [line for line in text.splitlines() if line.startswith("| ") and "| seed |" in line and "±" in line
            and line.count("|") == 10]
    # vs grpo: dapo (gains 4,4,4 vs 10,2,6: diffs -6,2,-2 -> p 0.5), pepo (p 0.5), pepo_d (diffs -5,1,1 -> p 0.75);
    # dapo:pepo_d diffs 1,-1,3: |S| >= 3 for sums 3, 5, 3 and their negatives -> p 6/8; Holm: all capped at 1
    assert [r.split(" | ")[:2] for r in rows] == [["| dapo", "grpo"], ["| pepo", "grpo"], ["| pepo_d", "grpo"],
                                                  ["| pepo_d", "dapo"]]
    assert "| pepo_d | dapo | seed | 3 | +1.00 ± 1.15 | 0.87 | 0.750 | 1.000 | 2/3 |" in text


def test_holm_literal():
    # sorted 0.01, 0.02, 0.04 (n = 3): 3 * 0.01 = 0.03, max(0.03, 2 * 0.02) = 0.04, max(0.04, 0.04) = 0.04
    assert study.holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    assert study.holm([0.5, float("nan")])[0] == pytest.approx(0.5)


def test_runner_warms_each_seed_once_and_resumes(tmp_path, monkeypatch):
    """The scheduler with a stand-in for `pepo demo`: a seed's other methods wait for its warm start."""
    fake = tmp_path / "fake_demo.py"
    fake.write_text(
        "import json, sys, pathlib\n"
        "a = dict(zip(sys.argv[1::2], sys.argv[2::2]))\n"
        "ws = pathlib.Path(a['--warm_start_dir']); out = pathlib.Path(a['--output_dir'])\n"
        "log = pathlib.Path(a['--log'])\n"
        "made = not (ws / 'warm_start.json').is_file()\n"
        "if made:\n    ws.mkdir(parents=True, exist_ok=True); (ws / 'warm_start.json').write_text('{}')\n"
        "with log.open('a') as f: f.write(f\"{out.name} {'made' if made else 'reused'}\\n\")\n"
        "out.mkdir(parents=True); (out / 'results.json').write_text('{}')\n")
    log = tmp_path / "calls.txt"
    monkeypatch.setattr(study, "_command", lambda out, m, s, off, extra: [
        sys.executable, str(fake), "--warm_start_dir", str(out / "warm_start" / f"s{s}"),
        "--output_dir", str(out / run_name(m, s, off)), "--log", str(log)])
    out = tmp_path / "study"
    assert study._run_all(out, ["grpo", "pepo", "vppo"], [0, 1], 0, 2, []) == 0
    calls = dict(line.split() for line in log.read_text().splitlines())
    assert sorted(calls) == sorted(run_name(m, s, 0) for m in ("grpo", "pepo", "vppo") for s in (0, 1))
    assert calls["grpo_s0"] == calls["grpo_s1"] == "made"
    assert all(v == "reused" for k, v in calls.items() if not k.startswith("grpo"))
    log.unlink()
    assert study._run_all(out, ["grpo", "pepo", "vppo"], [0, 1], 0, 2, []) == 0  # all finished: nothing runs
    assert not log.exists()
