"""The seed summary behind the README's demo numbers: literal, hand-computed values."""

import json

import pytest

from pepo.analysis.seeds import gain_summary, load_results, main


def _run(tmp_path, name, before, after, seed):
    d = tmp_path / name
    d.mkdir()
    (d / "results.json").write_text(json.dumps({
        "before_rl": {"overall": before, "n": 600.0}, "after_rl": {"overall": after, "n": 600.0}, "seed": seed}))
    return d


def test_gain_mean_and_standard_error(tmp_path, capsys):
    runs = [_run(tmp_path, "a", 0.40, 0.50, 0), _run(tmp_path, "b", 0.30, 0.36, 1), _run(tmp_path, "c", 0.35, 0.43, 2)]
    s = gain_summary(load_results(runs))
    # gains 10, 6, 8 points: mean 8, sample sd 2, s.e. 2/sqrt(3) = 1.1547
    assert s["mean_gain"] == pytest.approx(8.0)
    assert s["std"] == pytest.approx(2.0)
    assert s["stderr"] == pytest.approx(1.1547, abs=1e-4)
    assert main([str(r) for r in runs]) == 0
    out = capsys.readouterr().out
    assert "40.0 -> 50.0" in out and "+8.0 ± 1.2" in out and "gain > 2 s.e.: yes" in out


def test_missing_results_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="results.json"):
        load_results([tmp_path])
