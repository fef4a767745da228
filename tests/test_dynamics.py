"""`pepo analyze dynamics`: the plotted numbers are the runs' logged numbers."""

import json

from pepo.analysis.dynamics import dynamics_series, plot_dynamics
from pepo.cli import main


def _run(tmp_path, name, method, rows):
    d = tmp_path / name
    d.mkdir()
    (d / "config.yaml").write_text(f"method: {method}\n")
    (d / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return d


def test_series_and_files(tmp_path):
    a = _run(tmp_path, "a", "grpo", [{"step": 1, "reward": 0.2, "completions/mean_length": 5.0, "pepo/vs_mean": 0.1},
                                     {"step": 2, "reward": 0.4, "completions/mean_length": 4.0, "pepo/vs_mean": 0.2}])
    b = _run(tmp_path, "b", "pepo", [{"step": 1, "reward": 0.3, "pepo/entropy_mean": 1.5}, {"step": 2}])
    series = dynamics_series([a, b])
    assert series["a (grpo)"]["reward"] == [(1, 0.2), (2, 0.4)]
    assert series["a (grpo)"]["pepo/entropy_mean"] == []
    assert series["b (pepo)"]["pepo/entropy_mean"] == [(1, 1.5)]
    png = plot_dynamics([a, b], tmp_path / "out", "title")
    assert png.is_file() and png.stat().st_size > 10_000
    saved = json.loads((tmp_path / "out" / "dynamics.json").read_text())
    assert saved["a (grpo)"]["completions/mean_length"] == [[1, 5.0], [2, 4.0]]


def test_cli_names_a_folder_without_metrics(tmp_path, capsys):
    assert main(["analyze", "dynamics", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "metrics.jsonl not found" in capsys.readouterr().err
