"""Where two runs part ways (pepo.analysis.divergence): literal metrics, hand-checked output."""

import json

import pytest

from pepo.analysis.divergence import divergence, main, read_metrics


def _metrics(folder, rows):
    folder.mkdir()
    lines = [json.dumps({"step": s, "reward": r, "grad_norm": g}) for s, r, g in rows]
    lines.append(json.dumps({"step": 30, "train_runtime": 1.0}))  # the end-of-training line has no reward
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def test_first_reward_difference_and_grad_norm_gap(tmp_path, capsys):
    a = _metrics(tmp_path / "a", [(10, 0.25, 2.0), (20, 0.5, 4.0), (30, 0.5, 1.0)])
    b = _metrics(tmp_path / "b", [(10, 0.25, 2.0000002), (20, 0.5, 4.4), (30, 0.625, 1.0)])
    d = divergence(read_metrics(a), read_metrics(b))
    assert d["first_reward_difference"] == 30
    assert [s for s, *_ in d["rows"]] == [10, 20, 30]
    assert d["rows"][0][3] == pytest.approx(1e-7, rel=1e-3) and d["rows"][1][3] == pytest.approx(0.1)
    assert main([str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "| 20 | 0.5000 | 0.5000 | 1.0e-01 |" in out and "different mean reward: 30" in out


def test_identical_runs_never_diverge(tmp_path):
    rows = [(10, 0.25, 2.0), (20, 0.5, 4.0)]
    d = divergence(read_metrics(_metrics(tmp_path / "a", rows)), read_metrics(_metrics(tmp_path / "b", rows)))
    assert d["first_reward_difference"] is None and all(r[3] == 0 for r in d["rows"])
