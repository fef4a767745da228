"""`pepo eval`: avg/maj/pass from the same samples, interruption-safe resume, comparison table, errors."""

from __future__ import annotations

import json

import pytest

from pepo.cli import main
from pepo.eval.cli import compare_table
from pepo.eval.runner import EvalSettings, evaluate_rows, read_samples, summarize
from pepo.eval.tasks import TASKS, make_scorer
from tests.conftest import make_rl_rows


def _rec(pid, k, extracted, score):
    return {"id": pid, "sample": k, "output": extracted, "extracted": extracted, "score": score}


def test_summary_numbers_by_hand():
    samples = {
        # a: 1 of 4 correct, majority "2" is wrong -> avg 0.25, maj 0, pass 1
        "a": [_rec("a", 0, "2", 0.0), _rec("a", 1, "3", 1.0), _rec("a", 2, "2", 0.0), _rec("a", 3, "4", 0.0)],
        # b: 3 of 4 correct, majority "5" correct -> avg 0.75, maj 1, pass 1
        "b": [_rec("b", 0, "5", 1.0), _rec("b", 1, "5", 1.0), _rec("b", 2, "6", 0.0), _rec("b", 3, "5", 1.0)],
        # c: none correct; tie 1-1-1-1 goes to the first sample -> maj 0
        "c": [_rec("c", k, str(k), 0.0) for k in range(4)],
    }
    s = summarize(samples)
    assert s == {"avg": pytest.approx(100 * (0.25 + 0.75 + 0) / 3), "maj": pytest.approx(100 / 3),
                 "pass": pytest.approx(200 / 3), "prompts": 3}


class Interrupt(Exception):
    pass


def test_interrupted_run_resumes_without_losing_or_duplicating(tiny_vlm, tmp_path):
    model, processor = tiny_vlm
    rows = [dict(r) for r in make_rl_rows(6)]
    score = make_scorer(TASKS["synthetic"])
    settings = EvalSettings(num_samples=3, max_new_tokens=4, seed=5)

    full = evaluate_rows(model, processor, rows, score, tmp_path / "full", settings, show_progress=False)

    def stop_after_three(done):
        if done == 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        evaluate_rows(model, processor, rows, score, tmp_path / "cut", settings, show_progress=False,
                      after_prompt=stop_after_three)
    path = tmp_path / "cut" / "samples.jsonl"
    assert len(path.read_text().splitlines()) == 9  # 3 complete prompts
    # a kill mid-write: one sample of the next prompt and a torn line
    extra = full[str(rows[3]["id"])][0]
    with path.open("a") as f:
        f.write(json.dumps(extra) + "\n" + '{"id": "4", "sam')
    assert set(read_samples(path, 3)) == {str(r["id"]) for r in rows[:3]}
    resumed = evaluate_rows(model, processor, rows, score, tmp_path / "cut", settings, show_progress=False)
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert len(lines) == 18 and len({(r["id"], r["sample"]) for r in lines}) == 18
    assert resumed == full  # per-prompt seeds: identical samples whatever ran before


def test_cli_eval_compare_and_rerun(tiny_vlm, tmp_path, capsys):
    model, processor = tiny_vlm
    model.save_pretrained(tmp_path / "ckpt")
    processor.save_pretrained(tmp_path / "ckpt")
    out = tmp_path / "runs" / "a" / "synthetic"
    argv = ["eval", "--model", str(tmp_path / "ckpt"), "--task", "synthetic", "--limit", "4",
            "--num_samples", "2", "--output_dir", str(out)]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["prompts"] == 4 and summary["backend"] == "transformers" and summary["num_samples"] == 2
    assert "exact match" in summary["protocol"] and (out / "summary.md").is_file()
    before = (out / "samples.jsonl").read_text()
    assert main(argv) == 0  # a rerun resumes: nothing new is generated
    assert (out / "samples.jsonl").read_text() == before
    other = tmp_path / "runs" / "b" / "synthetic"
    other.mkdir(parents=True)
    (other / "summary.json").write_text(json.dumps({**summary, "avg": 50.0}))
    table = compare_table([str(tmp_path / "runs" / "a"), str(tmp_path / "runs" / "b")])
    assert table.splitlines()[0] == "| run | synthetic | average |"
    assert f"| a | {summary['avg']:.2f} | {summary['avg']:.2f} |" in table and "| b | 50.00 | 50.00 |" in table
    capsys.readouterr()
    assert main(["eval", "compare", str(tmp_path / "runs" / "a")]) == 0
    assert "| a |" in capsys.readouterr().out


def test_cli_errors_are_named(tiny_vlm, tmp_path, capsys):
    model, processor = tiny_vlm
    model.save_pretrained(tmp_path / "ckpt")
    processor.save_pretrained(tmp_path / "ckpt")
    data = tmp_path / "g3k"
    data.mkdir()
    (data / "test.jsonl").write_text(json.dumps({"img": "x.png", "problem": "q", "answer": "1"}) + "\n")
    # a single file has no splits: it serves as the split asked for (with a note), so the error is the column
    assert main(["eval", "--model", str(tmp_path / "ckpt"), "--task", "geometry3k", "--dataset",
                 str(data / "test.jsonl"), "--split", "validation"]) == 2
    out = capsys.readouterr()
    assert "column(s) ['images'] not found" in out.err and "not found; available" not in out.err
    assert "has no splits: its 1 rows serve as split 'validation'" in out.out
    assert main(["eval", "--model", str(tmp_path / "nope"), "--task", "synthetic", "--limit", "1"]) == 2
    assert "could not be loaded" in capsys.readouterr().err
    assert main(["eval", "compare", str(tmp_path)]) == 2


def test_seeded_row_sampler_draws_from_the_filtered_softmax():
    import torch

    from pepo.eval.generation import SeededRowSampler

    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    rows = 6000
    scores = logits.repeat(rows, 1)
    for temperature, top_p, expected in [
        (0.7, 1.0, torch.softmax(logits / 0.7, dim=0)),
        (1.0, 0.8, torch.tensor([0.7311, 0.2689, 0.0, 0.0])),  # nucleus {0, 1}: 0.644 + 0.237 >= 0.8
        (1.0, 0.6, torch.tensor([1.0, 0.0, 0.0, 0.0])),  # the first token alone covers 0.6
    ]:
        sampler = SeededRowSampler(range(rows), temperature, top_p)
        picks = sampler(None, scores).argmax(dim=-1)
        freq = torch.bincount(picks, minlength=4).float() / rows
        se = (expected * (1 - expected) / rows).sqrt()
        assert (freq - expected).abs().max() <= (4 * se).max() + 1e-9, (temperature, top_p, freq)


def test_seeded_row_sampler_rows_do_not_depend_on_their_batch():
    import torch

    from pepo.eval.generation import SeededRowSampler

    scores = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    together = SeededRowSampler([11, 22, 33])
    alone = SeededRowSampler([22])
    for _ in range(3):  # successive steps draw fresh noise, the same for the row wherever it sits
        assert torch.equal(together(None, scores)[1], alone(None, scores[1:2])[0])
    with pytest.raises(ValueError, match="seeds"):
        together(None, scores[:2])
    with pytest.raises(ValueError, match="temperature"):
        SeededRowSampler([1], temperature=0)


def test_batched_evaluation_gives_the_samples_of_one_prompt_at_a_time(tiny_vlm, tmp_path):
    model, processor = tiny_vlm
    rows = [dict(r) for r in make_rl_rows(5)]
    score = make_scorer(TASKS["synthetic"])
    settings = EvalSettings(num_samples=4, max_new_tokens=5, seed=3)
    one = evaluate_rows(model, processor, rows, score, tmp_path / "one", settings, show_progress=False, chunk_size=1)
    batched = evaluate_rows(model, processor, rows, score, tmp_path / "all", settings, show_progress=False,
                            chunk_size=4)
    assert batched == one
    outputs = [r["output"] for records in one.values() for r in records]
    assert len(set(outputs)) > 1  # it did sample (temperature 1.0): the equality is not trivial


def test_cli_eval_on_a_dataset_of_your_own_columns(tiny_vlm, tmp_path):
    from PIL import Image

    model, processor = tiny_vlm
    model.save_pretrained(tmp_path / "ckpt")
    processor.save_pretrained(tmp_path / "ckpt")
    Image.new("RGB", (112, 112), "red").save(tmp_path / "r.png")
    (tmp_path / "mine.jsonl").write_text(json.dumps({"img": "r.png", "q": "what colour ?", "a": "red"}) + "\n")
    out = tmp_path / "out"
    assert main(["eval", "--model", str(tmp_path / "ckpt"), "--task", "geometry3k", "--dataset",
                 str(tmp_path / "mine.jsonl"), "--split", "train", "--image_root", str(tmp_path),
                 "--image_column", "img", "--question_column", "q", "--answer_column", "a",
                 "--reward", "exact_match", "--num_samples", "2", "--max_new_tokens", "3", "--output_dir", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["prompts"] == 1 and summary["protocol"] == "exact_match reward of the completion"
