"""Token views while training (--log_token_views_every): records vs the trainer's own numbers, the page in
Chromium, TensorBoard event files, wandb offline files, `pepo watch` on live, finished and killed runs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
import torch

from pepo.analysis.token_views import QUANTITY_INFO, read_views, write_step
from pepo.token_view_capture import choose_rows
from tests.test_trainer import make_trainer

ROOT = Path(__file__).resolve().parents[1]


def _stash_view_inputs(trainer) -> list[dict]:
    """Keep a copy of the micro-batch each view step's records come from (its first one)."""
    seen: list[dict] = []
    original = trainer._compute_loss

    def wrapped(model, inputs):
        if trainer._token_view is not None and not trainer._token_view.get("_complete"):
            seen.append({k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()})
        return original(model, inputs)

    trainer._compute_loss = wrapped
    return seen


def _reference_weights(trainer, inputs) -> torch.Tensor:
    """PEPO weights from a plain forward with output_hidden_states and pepo.weights' public functions."""
    from pepo.weights import pepo_token_weights, rows_without_image, token_entropy, visual_similarity

    args, model = trainer.args, trainer.model
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
    C = inputs["completion_ids"].shape[1]
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1),
                    pixel_values=inputs["pixel_values"], image_grid_thw=inputs["image_grid_thw"],
                    mm_token_type_ids=inputs.get("mm_token_type_ids"), output_hidden_states=True)
        entropy = token_entropy(out.logits[:, -C - 1 : -1].float() / args.temperature)
        vision = ids == trainer.image_token_id
        scores = visual_similarity(out.hidden_states, vision, C, args.vision_score_type)
        return pepo_token_weights(scores, entropy, inputs["completion_mask"].bool(), args.gate_alpha,
                                  args.gate_temperature, no_image_rows=rows_without_image(vision))


@pytest.fixture(scope="module")
def pepo_run(tmp_path_factory, tiny_tokenizer):
    """Two PEPO steps (learning rate 0: the model the check re-runs is the one that trained), views at step 2."""
    from pepo.models.tiny import build_tiny_qwen2_5_vl

    tmp = tmp_path_factory.mktemp("views")
    trainer = make_trainer(build_tiny_qwen2_5_vl(tiny_tokenizer, seed=0), tmp, method="pepo", learning_rate=0.0,
                           log_token_views_every=2, token_views_rollouts=3, report_to=["tensorboard"])
    seen = _stash_view_inputs(trainer)
    trainer.train()
    return trainer, seen, Path(trainer.args.output_dir)


def test_records_hold_the_trainers_own_weights(pepo_run):
    trainer, seen, out = pepo_run
    views = read_views(out / "token_views")
    assert [v["step"] for v in views] == [2] and len(seen) == 1  # every 2 steps: step 2 only, one micro-batch
    record, inputs = views[0], seen[0]
    assert record["method"] == "pepo" and record["progress"] == pytest.approx(0.5)  # p = 1/2 during step 2
    assert record["quantities"] == ["weight", "schedule", "final_advantage", "similarity", "entropy", "gate"]
    reference = _reference_weights(trainer, inputs)
    mask = inputs["completion_mask"].bool()
    rollouts = record["rollouts"]
    assert len(rollouts) == 3
    rewards = [r["reward"] for r in rollouts]
    assert rewards == sorted(rewards) and rewards[0] < rewards[-1]  # low and high reward both shown
    for r in rollouts:
        row = r["row"]
        assert r["token_ids"] == inputs["completion_ids"][row][mask[row]].tolist()
        torch.testing.assert_close(torch.tensor(r["values"]["weight"]), reference[row][mask[row]],
                                   rtol=1e-5, atol=1e-5)
        adv = float(inputs["advantages"][row])
        assert r["advantage"] == pytest.approx(adv)
        expected = [adv * (0.5 + 0.5 * w) for w in r["values"]["weight"]]  # A * (1 - p + p w)
        assert r["values"]["final_advantage"] == pytest.approx(expected, rel=1e-5, abs=1e-6)
        # the reward TRL computed for this completion text (varied_reward is crc32 of the message list)
        text = trainer.processing_class.decode(r["token_ids"], skip_special_tokens=True)
        assert r["reward"] == float(zlib.crc32(str([{"role": "assistant", "content": text}]).encode()) % 5)
        n_image = int((inputs["prompt_ids"][row] == trainer.image_token_id).sum())
        assert r["patch"]["rows"] * r["patch"]["cols"] == n_image == len(r["patch"]["values"])
        assert r["image"].startswith("data:image/png;base64,")
        assert r["top_tokens"][0] == max(range(len(r["tokens"])), key=lambda i: r["values"]["weight"][i])


def test_patch_map_equals_per_patch_similarity(pepo_run):
    """The patch map is the per-image-token cosine of the top tokens, averaged over hidden states."""
    trainer, seen, out = pepo_run
    inputs, r = seen[0], read_views(out / "token_views")[0]["rollouts"][0]
    row, C = r["row"], inputs["completion_ids"].shape[1]
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)[row : row + 1]
    with torch.no_grad():
        full = trainer.model(input_ids=torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1),
                             attention_mask=torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1),
                             pixel_values=inputs["pixel_values"], image_grid_thw=inputs["image_grid_thw"],
                             mm_token_type_ids=inputs.get("mm_token_type_ids"), output_hidden_states=True).hidden_states
    vision = (ids[0] == trainer.image_token_id)
    valid = inputs["completion_mask"][row].bool()
    per_layer = []
    for h in full:
        tok = torch.nn.functional.normalize(h[row, -C:][valid].float(), dim=-1)
        img = torch.nn.functional.normalize(h[row][vision].float(), dim=-1)
        per_layer.append(tok @ img.T)
    expected = torch.stack(per_layer).mean(0)[r["top_tokens"]].mean(0)
    torch.testing.assert_close(torch.tensor(r["patch"]["values"]), expected, rtol=1e-4, atol=1e-5)


def test_tensorboard_reads_the_views_back(pepo_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, _, out = pepo_run
    record = read_views(out / "token_views")[0]
    logs = {p.parent for p in out.parent.rglob("events.out.tfevents.*")}
    assert len(logs) == 1, logs
    events = EventAccumulator(str(logs.pop()), size_guidance={"images": 0, "tensors": 0})
    events.Reload()
    tags = events.Tags()
    assert {f"token_views/patch_map_{i}" for i in range(3)} <= set(tags["images"])
    image = events.Images("token_views/patch_map_0")[0]
    assert image.step == 2 and image.width == 224 and image.height == 224
    text = events.Tensors("token_views/text_summary")[0]
    assert text.step == 2
    body = text.tensor_proto.string_val[0].decode()
    first = record["rollouts"][0]
    assert f"| 0 | " in body and f"{first['values']['weight'][0]:.3f}" in body and "weight" in body


def test_wandb_offline_run_holds_the_views(tmp_path, monkeypatch, pepo_run):
    wandb = pytest.importorskip("wandb")
    from pepo.callbacks_token_views import TokenViewsCallback

    trainer, _, out = pepo_run
    record = read_views(out / "token_views")[0]
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = wandb.init(project="pepo-test", dir=str(tmp_path))
    try:
        TokenViewsCallback(trainer, every=1)._to_wandb(record)
    finally:
        run.finish()
    files = tmp_path / "wandb"
    tables = list(files.rglob("token_views/tokens_*.table.json"))
    pages = list(files.rglob("token_views/page_*.html"))
    images = list(files.rglob("token_views/patch_maps_*.png"))
    assert len(tables) == 1 and len(pages) == 1 and len(images) == 3
    table = json.loads(tables[0].read_text())
    assert table["columns"][:6] == ["step", "rollout", "reward", "advantage", "position", "token"]
    assert len(table["data"]) == sum(len(r["tokens"]) for r in record["rollouts"])
    assert table["data"][0][5] == record["rollouts"][0]["tokens"][0]
    assert "pepoView(" in pages[0].read_text()


@pytest.fixture(scope="module")
def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("Chromium not installed: apt-get install chromium")


def _chromium(chromium: str, profile: Path, url: str, *extra: str) -> str:
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--disable-background-networking", "--no-first-run", f"--user-data-dir={profile}", *extra, url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_page_in_chromium_and_refresh_shows_new_steps(pepo_run, chromium, tmp_path):
    import re

    _, _, out = pepo_run
    folder = tmp_path / "token_views"
    shutil.copytree(out / "token_views", folder)
    record = read_views(folder)[0]
    url = (folder / "index.html").resolve().as_uri()
    dom = _chromium(chromium, tmp_path / "p", f"{url}#step=2&q=entropy", "--dump-dom")
    assert 'data-step="2"' in dom and 'data-quantity="entropy"' in dom
    colours = re.findall(r'class="tok(?: top)?"[^>]*style="background-color: rgb\((\d+), (\d+), (\d+)\)', dom)
    expected = [c for r in record["rollouts"] for c in r["colors"]["entropy"]]
    assert ["#%02x%02x%02x" % tuple(map(int, c)) for c in colours] == expected
    # a step written while the page is open appears on refresh (a new step_N.js, index.html rewritten)
    later = dict(record, step=4)
    write_step(folder, later)
    dom = _chromium(chromium, tmp_path / "p", url, "--dump-dom")
    assert 'data-step="4"' in dom and "2 of 2" in dom
    shot = Path(os.environ.get("PEPO_SCREENSHOT_DIR", tmp_path)) / "token_views_page.png"
    _chromium(chromium, tmp_path / "p", f"{url}#step=4&q=weight", f"--screenshot={shot}", "--window-size=1300,800")
    from PIL import Image

    img = Image.open(shot).convert("RGB")
    assert img.size == (1300, 800) and len(img.getcolors(1 << 20)) > 50


def test_choose_rows_covers_low_and_high_reward():
    assert choose_rows([3.0, 0.0, 1.0, 2.0, 4.0], 3) == [1, 3, 4]
    assert choose_rows([1.0, 1.0], 4) == [0, 1] and choose_rows([], 2) == []


@pytest.mark.parametrize("method,quantity", [("vppo", "vppo_selected"), ("high_entropy", "high_entropy_mask"),
                                             ("papo_g", "papo_kl")])
def test_methods_declare_their_quantities(tiny_vlm, tmp_path, method, quantity):
    trainer = make_trainer(tiny_vlm, tmp_path, method=method, max_steps=1, log_token_views_every=1,
                           log_token_stats=False, dynamic_sampling=False, mask_truncated_completions=False)
    seen = _stash_view_inputs(trainer)
    trainer.train()
    record = read_views(Path(trainer.args.output_dir) / "token_views")[0]
    assert quantity in record["quantities"] and "weight" not in record["quantities"]
    for r in record["rollouts"]:
        values = r["values"]
        assert len(r["tokens"]) == 6 and all(len(v) == 6 for v in values.values())
        if method == "vppo":  # unselected tokens train with advantage 0
            assert r["advantage"] != 0.0 and sum(values["vppo_selected"]) == 3  # ceil(0.4 x 6) tokens train
            assert [a != 0.0 for a in values["final_advantage"]] == [s == 1.0 for s in values["vppo_selected"]]
            assert len(values["vppo_dependency"]) == len(r["tokens"])
        if method == "high_entropy":
            assert set(values[quantity]) <= {0.0, 1.0}
            threshold = min(e for e, m in zip(values["entropy"], values[quantity]) if m) if any(values[quantity]) else None
            assert threshold is None or all(e < threshold for e, m in zip(values["entropy"], values[quantity]) if not m)
        if method == "papo_g":
            assert all(v is not None and v >= 0 for v in values["papo_kl"])  # low-variance KL is >= 0


def _watch(run: Path) -> str:
    done = subprocess.run([sys.executable, "-m", "pepo.cli", "watch", str(run)], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_watch_on_live_killed_and_finished_runs(tmp_path, pepo_run):
    _, _, finished = pepo_run
    text = _watch(finished)
    assert "finished" in text and "top tokens by weight at step 2" in text
    assert str((finished / "token_views" / "index.html").resolve()) in text
    out = tmp_path / "live"
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "token_views_runner.py"), str(out), "50", "1.0"],
                            env={**os.environ, "PYTHONPATH": str(ROOT / "src")}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not list((out / "token_views").glob("step_*.jsonl")) and time.time() < deadline:
            assert proc.poll() is None, "the run died"
            time.sleep(0.5)
        time.sleep(0.5)
        text = _watch(out)
        assert text.startswith(f"run {out}: running") and "top tokens by weight" in text
        assert "weight percentiles" in text or not (out / "metrics.jsonl").is_file()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    text = _watch(out)
    assert f"run {out}: stopped" in text and "killed or interrupted" in text and "top tokens by weight" in text


def test_watch_prints_held_out_accuracy_once_from_the_newest_file(tmp_path):
    from pepo.watch import summary

    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "reward": 0.5}\n')
    (tmp_path / "pre_rl.json").write_text('{"before_rl": {"overall": 0.483}}')
    assert "held-out accuracy before RL 0.483\n" in summary(tmp_path) + "\n"
    (tmp_path / "results.json").write_text('{"before_rl": {"overall": 0.483}, "after_rl": {"overall": 0.563}}')
    text = summary(tmp_path)
    assert text.count("held-out accuracy") == 1 and "before RL 0.483, after RL 0.563" in text
