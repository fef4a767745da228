"""Resume: a run killed (SIGKILL) or stopped (Ctrl-C) and resumed ends bit-identical to an uninterrupted one.

The end-to-end test runs ``pepo train`` in subprocesses (tests/resume_runner.py adds a varied reward so that
an untrained tiny model gets signal) with a configuration where every piece of resume state matters:
one generation serves 4 optimizer steps (steps_per_generation 2 x num_iterations 2), so checkpoints every
3 steps fall inside TRL's buffered batch; logging every 2 steps, so some checkpoints hold metrics not yet logged; DAPO dynamic sampling drops groups and draws extra prompts; an
epoch is 8 steps, so the 16-step run crosses an epoch boundary; beta > 0 keeps a reference model.
"""

from __future__ import annotations

import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pepo.callbacks import truncate_metrics
from pepo.resume import (
    MARKER,
    find_resumable_checkpoint,
    is_complete_checkpoint,
    resolve_resume_checkpoint,
    load_process_state,
    resume_command,
    save_process_state,
    write_marker,
)

ROOT = Path(__file__).resolve().parents[1]
MAX_STEPS = 16
SAVE_STEPS = 3
LOG_STEPS = 2  # checkpoints at odd steps hold metrics not logged yet
ARGS = [
    "train", "--num_train", "8", "--num_test", "8", "--warm_start_steps", "2", "--warm_start_target", "0",
    "--warm_start_min_accuracy", "0", "--max_steps", str(MAX_STEPS), "--logging_steps", str(LOG_STEPS),
    "--per_device_train_batch_size", "8", "--num_generations", "4", "--method", "pepo", "--dynamic_sampling", "true",
    "--loss_type", "dapo", "--steps_per_generation", "2", "--num_iterations", "2", "--save_strategy", "steps",
    "--save_steps", str(SAVE_STEPS), "--beta", "0.01", "--learning_rate", "0.002", "--reward_funcs", "varied",
    "--max_completion_length", "8", "--report_to", "none",
]
#: wall-clock measurements, different in every run by nature
TIMING_KEYS = {"step_time", "pepo/overhead_ms", "train_runtime", "train_samples_per_second", "train_steps_per_second",
               "train_loss"}


# --- which checkpoint is complete ------------------------------------------------------------------------


def _fake_checkpoint(folder: Path, step: int, marker: bool = True, state_text: str | None = None) -> Path:
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text(state_text if state_text is not None else json.dumps({"global_step": step}))
    (folder / "pepo_state_0.pt").write_bytes(b"x")
    if marker:
        write_marker(folder, step, ["pepo_state_0.pt"])
    return folder


def test_newest_complete_checkpoint_skips_folders_killed_while_saving(tmp_path):
    _fake_checkpoint(tmp_path / "checkpoint-9", 9)
    _fake_checkpoint(tmp_path / "checkpoint-10", 10)  # numeric order, not string order: 10 > 9
    _fake_checkpoint(tmp_path / "checkpoint-12", 12, marker=False)  # killed before the marker
    _fake_checkpoint(tmp_path / "checkpoint-15", 15, state_text='{"global_st')  # trainer_state.json cut short
    bad_files = _fake_checkpoint(tmp_path / "checkpoint-18", 18)
    write_marker(bad_files, 18, ["pepo_state_0.pt", "pepo_state_1.pt"])  # a process's state file is missing
    _fake_checkpoint(tmp_path / "checkpoint-21", 20)  # marker and state name another step than the folder
    (tmp_path / "checkpoint").mkdir()  # the final model folder is not a training checkpoint
    assert find_resumable_checkpoint(tmp_path) == tmp_path / "checkpoint-10"
    assert [is_complete_checkpoint(tmp_path / f"checkpoint-{n}") for n in (9, 10, 12, 15, 18, 21)] == [
        True, True, False, False, False, False]
    assert resolve_resume_checkpoint("auto", tmp_path) == tmp_path / "checkpoint-10"
    assert resolve_resume_checkpoint(None, tmp_path) is None
    assert resolve_resume_checkpoint("auto", tmp_path / "nothing-here") is None
    with pytest.raises(ValueError, match=r"checkpoint-12: not a complete.*resume from .*checkpoint-10, the newest complete one"):
        resolve_resume_checkpoint(str(tmp_path / "checkpoint-12"), tmp_path)


def test_truncate_metrics_keeps_each_step_once(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [{"step": s, "loss": s / 10} for s in range(1, 8)] + [{"step": 7, "train_runtime": 3.0}]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"step": 8, "lo')  # killed mid-line
    assert truncate_metrics(path, 6) == 3
    assert [json.loads(x) for x in path.read_text().splitlines()] == lines[:6]
    # A finished run's summary line (same step as the last checkpoint) goes too: the resumed run writes its own.
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    truncate_metrics(path, 7)
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [1, 2, 3, 4, 5, 6, 7]


def test_resume_command_replaces_an_earlier_resume_option():
    argv = ["--output_dir", "runs/my run", "--resume_from_checkpoint", "runs/x/checkpoint-3", "--seed", "1"]
    assert resume_command("train", argv) == (
        "pepo train --output_dir 'runs/my run' --seed 1 --resume_from_checkpoint auto")
    assert resume_command("demo", ["--resume_from_checkpoint=auto"]) == "pepo demo --resume_from_checkpoint auto"


def test_epoch_sampler_matches_trl_and_replays_any_epoch():
    from trl.trainer.utils import RepeatSampler

    from pepo.trainer import _EpochRepeatSampler

    kw = dict(data_source=list(range(12)), mini_repeat_count=2, batch_size=3, repeat_count=2, shuffle=True, seed=5)
    trl, ours = RepeatSampler(**kw), _EpochRepeatSampler(**kw)
    epochs = []
    for epoch in range(3):
        ours.set_epoch(epoch)
        epochs.append(list(ours))
        assert epochs[-1] == list(trl), f"epoch {epoch}: an uninterrupted run must see TRL's order"
    assert epochs[0] != epochs[1] != epochs[2]
    fresh = _EpochRepeatSampler(**kw)  # what a run resumed in epoch 2 builds
    fresh.set_epoch(2)
    assert list(fresh) == epochs[2]


def test_fresh_start_refuses_a_folder_with_an_unfinished_run(tmp_path, capsys):
    from pepo.cli import main

    out = tmp_path / "run"
    _fake_checkpoint(out / "checkpoint-3", 3)
    assert main(ARGS[:1] + ["--output_dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert "checkpoints of an unfinished run (newest complete: checkpoint-3)" in err
    assert "--resume_from_checkpoint auto" in err
    assert (out / "checkpoint-3").is_dir()  # nothing deleted


# --- kill, Ctrl-C, resume: end to end --------------------------------------------------------------------


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def _start(args: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "tests" / "resume_runner.py"), *args], cwd=ROOT, env=_env(),
                            stdout=log.open("w"), stderr=subprocess.STDOUT)


def _finish(proc: subprocess.Popen, log: Path, timeout: float = 600) -> str:
    proc.wait(timeout=timeout)
    return log.read_text()


def _metrics(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:  # a line being written
            pass
    return records


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


def _wait_for_step(proc: subprocess.Popen, out: Path, step: int, log: Path, replaced: int | None = None) -> None:
    """Wait until metrics.jsonl holds a line for ``step``; fail if the run ends first.

    ``replaced``: the file's inode before a resume, which truncates it by replacing it; lines of the
    killed process that are still in the old file do not count.
    """
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        fresh = replaced is None or _inode(out / "metrics.jsonl") not in (None, replaced)
        if fresh and any(r["step"] == step for r in _metrics(out)):
            return
        if proc.poll() is not None:
            pytest.fail(f"the run ended (rc {proc.returncode}) before step {step}:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)
    pytest.fail(f"step {step} not reached in time")


def _weights(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(out / "checkpoint" / "model.safetensors"))


def test_killed_and_interrupted_run_resumes_bit_identical(tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    # A different kill step every time (PEPO_TEST_KILL_STEP pins one); it is in every failure message. The
    # first resume then starts in epoch 0 (from step 3 or 6); the Ctrl-C comes as step 10 is logged, so the
    # run stops after step 11 (inside a buffered generation, metrics not yet logged) or 12, and the second
    # resume starts in epoch 1 with the extra-prompt stream open and generates again at step 13.
    kill_at = int(os.environ.get("PEPO_TEST_KILL_STEP", 0)) or random.choice([4, 6, 8])  # logged steps
    where = f"(SIGKILL at step {kill_at}; PEPO_TEST_KILL_STEP={kill_at} repeats it)"

    # The reference: uninterrupted, asked to resume from a folder with nothing in it.
    start = time.perf_counter()
    log = tmp_path / "full.log"
    text = _finish(_start(ARGS + ["--output_dir", str(full), "--resume_from_checkpoint", "auto"], log), log)
    uninterrupted_seconds = time.perf_counter() - start
    assert f"no complete checkpoint in {full}; starting fresh" in text, text[-3000:]
    assert (full / "results.json").is_file(), text[-3000:]

    # 1. SIGKILL at a random step after the first checkpoint.
    start = time.perf_counter()
    log = tmp_path / "cut1.log"
    proc = _start(ARGS + ["--output_dir", str(cut)], log)
    _wait_for_step(proc, cut, kill_at, log)
    proc.kill()
    _finish(proc, log)
    assert not (cut / "results.json").exists()
    warm_start_files = {p.name: p.stat().st_mtime_ns for p in (cut / "warm_start").iterdir()}
    resumed_from = find_resumable_checkpoint(cut)
    assert resumed_from is not None, where
    first_resume = int(resumed_from.name.split("-")[1])
    assert first_resume % SAVE_STEPS == 0 and first_resume <= kill_at, where

    # 2. Resume, and Ctrl-C it at step 10: it finishes the step, saves, and prints the resume command.
    log = tmp_path / "cut2.log"
    argv = ARGS + ["--output_dir", str(cut), "--resume_from_checkpoint", "auto"]
    before_resume = _inode(cut / "metrics.jsonl")
    proc = _start(argv, log)
    _wait_for_step(proc, cut, 10, log, replaced=before_resume)
    proc.send_signal(signal.SIGINT)
    text = _finish(proc, log)
    assert proc.returncode == 130, f"{where}\n{text[-3000:]}"
    assert f"resuming from {resumed_from} (step {first_resume})" in text, where
    assert "warm start attempt" not in text and "reusing the warm-started model" in text, where
    assert "Traceback" not in text, text[-3000:]
    line = [x for x in text.splitlines() if "resume with: " in x]
    assert len(line) == 1, text[-3000:]
    stopped = int(line[0].split("stopped at step ")[1].split(",")[0])
    assert stopped in (11, 12), where  # the step after the one whose log line triggered the Ctrl-C
    assert is_complete_checkpoint(cut / f"checkpoint-{stopped}"), where
    assert find_resumable_checkpoint(cut) == cut / f"checkpoint-{stopped}"
    command = shlex.split(line[0].split("resume with: ")[1])
    assert command == ["pepo"] + ARGS + ["--output_dir", str(cut), "--resume_from_checkpoint", "auto"], where
    assert not (cut / "results.json").exists()

    # 3. The printed command finishes the run.
    log = tmp_path / "cut3.log"
    text = _finish(_start(command[1:], log), log)
    resumed_seconds = time.perf_counter() - start
    assert f"resuming from {cut / f'checkpoint-{stopped}'} (step {stopped})" in text, f"{where}\n{text[-3000:]}"
    assert "warm start attempt" not in text, where
    assert {p.name: p.stat().st_mtime_ns for p in (cut / "warm_start").iterdir()} == warm_start_files, where

    # Final weights: bit-identical.
    a, b = _weights(full), _weights(cut)
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{where} resumed at {first_resume} and {stopped}: {len(differ)} tensors differ, e.g. {differ[:3]}"
    # metrics.jsonl: every step exactly once, with the same values (timings aside).
    ma, mb = _metrics(full), _metrics(cut)
    logged = list(range(LOG_STEPS, MAX_STEPS + 1, LOG_STEPS))
    assert [r["step"] for r in mb] == [r["step"] for r in ma] == logged + [MAX_STEPS], where
    for ra, rb in zip(ma, mb):
        assert ra.keys() == rb.keys(), f"{where} step {ra['step']}"
        changed = {k for k in ra if k not in TIMING_KEYS and ra[k] != rb[k]}
        assert not changed, f"{where} step {ra['step']}: {sorted(changed)} differ"
    # PEPO's progress p = global_step / max_steps (taken before the step's increment) continues from the
    # restored step: each line averages the p of the steps since the previous line.
    expected = [sum((s - 1 - k) / MAX_STEPS for k in range(LOG_STEPS)) / LOG_STEPS for s in logged]
    assert [r["pepo/progress"] for r in mb if "pepo/progress" in r] == pytest.approx(expected, abs=1e-12)
    # The run really used what resume must restore: extra dynamic-sampling rounds, an epoch boundary, training.
    assert max(r.get("dynamic_sampling/rounds", 1) for r in ma) > 1
    assert any(r.get("epoch", 0) > 1 for r in ma)
    assert all(r["grad_norm"] > 0 for r in ma if "grad_norm" in r)
    # Results written once, by the process that finished, equal to the uninterrupted run's.
    ra, rb = json.loads((full / "results.json").read_text()), json.loads((cut / "results.json").read_text())
    assert (rb["before_rl"], rb["after_rl"]) == (ra["before_rl"], ra["after_rl"])
    assert rb["resumed_from_step"] == stopped and ra["resumed_from_step"] is None
    print(f"\nkill at step {kill_at}, resumed from {first_resume}, Ctrl-C at {stopped}: bit-identical; "
          f"uninterrupted {uninterrupted_seconds:.1f} s, interrupted twice and resumed {resumed_seconds:.1f} s")

    # A checkpoint folder whose save was cut short is never taken as the newest.
    newest = find_resumable_checkpoint(cut)
    assert newest == cut / f"checkpoint-{MAX_STEPS}"  # the Trainer also saves at the last step
    partial = cut / f"checkpoint-{MAX_STEPS + SAVE_STEPS}"
    shutil.copytree(newest, partial)
    (partial / MARKER).unlink()
    assert find_resumable_checkpoint(cut) == newest


def test_process_state_keeps_buffered_images_pixel_for_pixel(tmp_path):
    # TRL's buffered batch carries the rows' PIL images (token views, PAPO/VPPO image masking):
    # torch.load(weights_only=True) refuses PIL objects, so a mid-block checkpoint could not be resumed.
    import io

    from PIL import Image

    rgb = Image.fromarray(np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3), "RGB")
    gray = Image.fromarray(np.arange(12, dtype=np.uint8).reshape(3, 4) * 20, "L")
    pal = Image.fromarray(np.array([[0, 1], [2, 1]], dtype=np.uint8), "P")
    pal.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255])
    buf = io.BytesIO()
    rgb.save(buf, format="PNG")
    png = Image.open(io.BytesIO(buf.getvalue()))  # what datasets hands over: a lazily decoded PngImageFile
    state = {"global_step": 3, "buffered_inputs": [{"completion_ids": torch.tensor([[1, 2]]),
                                                    "_view_images": [[rgb, gray], [pal], [png], []]}]}
    save_process_state(tmp_path, 0, state)
    back = load_process_state(tmp_path, 0)
    images = back["buffered_inputs"][0]["_view_images"]
    assert [len(row) for row in images] == [2, 1, 1, 0]
    for got, want in zip([images[0][0], images[0][1], images[1][0], images[2][0]], [rgb, gray, pal, rgb]):
        assert got.mode == want.mode and got.size == want.size
        assert np.array_equal(np.asarray(got.convert("RGB")), np.asarray(want.convert("RGB")))
    assert images[1][0].getpalette()[:9] == [255, 0, 0, 0, 255, 0, 0, 0, 255]
    assert torch.equal(back["buffered_inputs"][0]["completion_ids"], torch.tensor([[1, 2]]))
