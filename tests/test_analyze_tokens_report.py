"""`pepo analyze tokens` end to end on a tiny model: every figure's numbers trace back to the records,
and the records' weights are `pepo.weights` applied to that response."""

from __future__ import annotations

import json
import re
from html import unescape

import pytest
import torch
import yaml

import pepo.analysis.token_report as token_report
from conftest import make_rl_rows
from pepo.analysis.token_report import analyze_tokens
from pepo.analysis.tokens import TokenAnalysisSettings
from pepo.analysis.words import normalize_word
from pepo.cli import main
from pepo.eval.tasks import TASKS, make_scorer
from pepo.models.loading import image_token_id
from test_analysis_tokens import _reference


@pytest.fixture()
def report(tiny_vlm, tmp_path, monkeypatch):
    model, processor = tiny_vlm
    rows = make_rl_rows(5)
    calls = []
    real = token_report.score_completions

    def counting(model, processor, prompts, *args, **kwargs):
        calls.append(len(prompts))
        return real(model, processor, prompts, *args, **kwargs)

    monkeypatch.setattr(token_report, "score_completions", counting)
    settings = TokenAnalysisSettings(max_new_tokens=8, num_samples=2, batch_size=2, gate_alpha=0.2,
                                     gate_temperature=0.7)
    out = tmp_path / "analysis"
    summary = analyze_tokens(model, processor, rows, make_scorer(TASKS["synthetic"]), out, settings,
                             {"model": "tiny", "task": "synthetic"}, image_token_id(model, processor),
                             heatmap_pngs=2, top_k=2, show_progress=False)
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    return model, processor, rows, out, summary, records, calls


def test_records_and_batches(report):
    _, _, rows, out, summary, records, calls = report
    assert calls == [4, 4, 2]  # 2 prompts x 2 samples per forward: never the whole set at once
    assert len(records) == summary["responses"] == 10
    assert [(r["id"], r["sample"]) for r in records] == [(str(i), k) for i in range(5) for k in range(2)]
    for r in records:
        assert r["response"] == "".join(r["tokens"])
        assert len(r["shift"]) == len(r["tokens"]) and all(s >= 0 for s in r["shift"])
        assert sum(r["weight"]) == pytest.approx(len(r["tokens"]), rel=1e-5)
        assert r["correct"] == (r["reward"] >= 0.5)
        assert (out / r["image"]).is_file()
    assert summary["mean_reward"] == pytest.approx(sum(r["reward"] for r in records) / 10)


def test_heatmap_weights_equal_pepo_weights_for_that_response(report):
    model, processor, rows, out, _, records, _ = report
    pages = sorted((out / "heatmaps").glob("0*.html"))
    assert len(pages) == len(records)
    for index in (0, 7):
        record = records[index]
        html = pages[index].read_text()
        weights = [float(w) for w in re.findall(r'data-weight="([^"]+)"', html)]
        texts = [unescape(t) for t in re.findall(r'<span class="tok"[^>]*>(.*?)</span>', html, re.S)]
        assert texts == record["tokens"]
        ids = record["token_ids"]
        assert [processor.tokenizer.decode([t]) for t in ids] == record["tokens"]
        row = rows[int(record["id"])]
        sim, ent, weight = _reference(model, processor, row, ids, 1.0, 0.2, 0.7)
        torch.testing.assert_close(torch.tensor(weights), weight, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(torch.tensor(record["similarity"]), sim, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(torch.tensor(record["entropy"]), ent, atol=1e-5, rtol=1e-5)


def test_figures_are_built_from_the_records(report):
    _, processor, _, out, summary, records, _ = report
    dist = json.loads((out / "similarity_distributions.json").read_text())
    for group, flag in (("correct", True), ("incorrect", False)):
        means = [sum(r["similarity"]) / len(r["similarity"]) for r in records if r["correct"] == flag]
        stat = dist["statistics"]["global_mean"]
        assert stat[f"n_{group}"] == len(means)
        if means:
            assert stat[f"mean_{group}"] == pytest.approx(sum(means) / len(means), abs=1e-9)
    shift = json.loads((out / "hidden_state_shift.json").read_text())
    assert shift["tokens"] == sum(len(r["tokens"]) for r in records)
    assert shift["mean_shift_high"] > 0
    words = json.loads((out / "words.json").read_text())
    specials = set(processor.tokenizer.all_special_tokens)
    table = {row["word"]: row for row in words["tables"]["similarity"]} if "tables" in words else {
        row["word"]: row for row in words["similarity"]}
    for word, row in table.items():
        occurrences = [s for r in records for t, s in zip(r["tokens"], r["similarity"])
                       if t not in specials and normalize_word(t) == word]
        assert row["count"] == len(occurrences)
        assert row["mean_similarity"] == pytest.approx(sum(occurrences) / len(occurrences), abs=1e-9)
    assert "im_end" not in table  # special tokens are format, not words
    index = (out / "index.md").read_text()
    for name in re.findall(r"`([^`]+\.(?:png|json|jsonl|html|md))`", index):
        assert (out / name).is_file(), name
    for name in ("similarity_distributions.png", "hidden_state_shift.png", "wordcloud_similarity.png",
                 "wordcloud_entropy.png", "heatmaps/index.html"):
        assert name in index
    assert len(summary["heatmap_pngs"]) == 2


def test_cli_reads_the_run_config_and_reports_errors(tiny_vlm, tmp_path, capsys):
    model, processor = tiny_vlm
    run = tmp_path / "run"
    model.save_pretrained(run / "checkpoint")
    processor.save_pretrained(run / "checkpoint")
    (run / "config.yaml").write_text(yaml.safe_dump({"gate_alpha": 0.3, "gate_temperature": 1.1,
                                                     "vision_score_type": "dot"}))
    out = tmp_path / "out"
    code = main(["analyze", "tokens", "--model", str(run / "checkpoint"), "--limit", "2", "--max_new_tokens", "4",
                 "--gate_temperature", "0.9", "--shift", "none", "--out", str(out)])
    assert code == 0
    meta = json.loads((out / "meta.json").read_text())
    assert (meta["gate_alpha"], meta["gate_temperature"], meta["score_type"]) == (0.3, 0.9, "dot")
    assert not (out / "hidden_state_shift.png").exists() and "hidden_state_shift" not in (out / "index.md").read_text()
    assert "results:" in capsys.readouterr().out
    assert main(["analyze", "tokens", "--model", str(run / "checkpoint"), "--task", "nope"]) == 2
    assert "unknown task 'nope'" in capsys.readouterr().err
    assert main(["analyze", "tokens", "--model", str(run / "checkpoint"), "--score_type", "cos"]) == 2
    assert "score_type must be one of" in capsys.readouterr().err
    assert main(["analyze", "tokens", "--model", str(tmp_path / "missing"), "--limit", "1",
                 "--out", str(tmp_path / "x")]) == 2
    assert "could not be loaded" in capsys.readouterr().err


def test_cli_on_a_dataset_of_your_own_columns(tiny_vlm, tmp_path, capsys):
    from PIL import Image

    model, processor = tiny_vlm
    model.save_pretrained(tmp_path / "ckpt")
    processor.save_pretrained(tmp_path / "ckpt")
    images = tmp_path / "imgs"
    images.mkdir()
    lines = []
    for i, colour in enumerate(["red", "blue", "green"]):
        Image.new("RGB", (112, 112), colour).save(images / f"{i}.png")
        lines.append(json.dumps({"uid": str(i), "img": f"{i}.png", "q": f"what colour is it {i} ?", "a": colour}))
    (tmp_path / "mine.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    argv = ["analyze", "tokens", "--model", str(tmp_path / "ckpt"), "--task", "geometry3k",
            "--dataset", str(tmp_path / "mine.jsonl"), "--split", "train", "--image_root", str(images),
            "--image_column", "img", "--question_column", "q", "--answer_column", "a", "--reward", "exact_match",
            "--prompt_instruction", "", "--limit", "3", "--max_new_tokens", "4", "--shift", "none", "--out", str(out)]
    assert main(argv) == 0
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert [r["question"] for r in records] == [f"what colour is it {i} ?" for i in range(3)]
    assert [r["answer"] for r in records] == ["red", "blue", "green"]
    assert all(r["reward"] in (0.0, 1.0) for r in records)
    capsys.readouterr()
    assert main(argv[:-2] + ["--reward", "exact", "--out", str(out)]) == 2
    assert "unknown reward 'exact'" in capsys.readouterr().err
