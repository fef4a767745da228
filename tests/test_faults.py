"""Faults at any moment, nothing lost: real SIGKILLs (and disk errors) at chosen points of training and evaluation.

Each chain runs ``pepo train`` in subprocesses (tests/fault_runner.py) on one run folder: the first run starts
fresh, every later one is the same command with ``--resume_from_checkpoint auto``, and each run but the last
has one fault armed through ``PEPO_FAULT=<point>:<count>[:kind]`` (:mod:`pepo.faults`), chosen so that it fires
in that run. After every run: every checkpoint taken as complete loads, results.json is absent or whole. At the
end: the final weights are bit-identical to an uninterrupted run's (one reference per configuration, shared by
the tests of a session), results.json holds the same scores, metrics.jsonl holds each step once with the same
values. ``python -m pytest tests/test_faults.py -m "slow or not slow"`` (``scripts/fault_suite.sh``) runs them all.

The tiny configuration: 6 steps, a checkpoint after every step, one generation per 2 steps (a checkpoint at
odd steps falls inside TRL's buffered batch), a log line per step.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pepo.resume import MARKER, checkpoint_problem, find_resumable_checkpoint, is_complete_checkpoint

ROOT = Path(__file__).resolve().parents[1]
MAX_STEPS = 6
BASE = [
    "train", "--num_train", "8", "--num_test", "4", "--warm_start_steps", "2", "--warm_start_target", "0",
    "--warm_start_min_accuracy", "0", "--max_steps", str(MAX_STEPS), "--logging_steps", "1",
    "--per_device_train_batch_size", "4", "--num_generations", "2", "--steps_per_generation", "2",
    "--save_strategy", "steps", "--save_steps", "1", "--learning_rate", "0.002", "--reward_funcs", "varied",
    "--max_completion_length", "4", "--eval_max_new_tokens", "4", "--report_to", "none", "--torch_threads", "1",
]
TIMING_KEYS = {"step_time", "pepo/overhead_ms", "train_runtime", "train_samples_per_second", "train_steps_per_second",
               "train_loss"}
RESULT_KEYS_THAT_VARY = {"seconds", "environment", "resumed_from_step"}
#: one line per fault fired in this session: fault, where, outcome, time to recover (printed at the end with -s)
TABLE: list[str] = []


def _args(method: str = "pepo", limit: int | None = 2, extra: tuple[str, ...] = ()) -> list[str]:
    args = BASE + ["--method", method, *extra]
    if limit is not None:
        args += ["--save_total_limit", str(limit)]
    return args


def _env(fault: str | None = None) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    env.pop("PEPO_FAULT", None)
    if fault:
        env["PEPO_FAULT"] = fault
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    return env


def _run(args: list[str], fault: str | None = None, timeout: float = 600) -> tuple[int, str, float]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "fault_runner.py"), *args], cwd=ROOT,
                          env=_env(fault), capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr, time.perf_counter() - start


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def _results(out: Path) -> dict:
    return {k: v for k, v in json.loads((out / "results.json").read_text()).items() if k not in RESULT_KEYS_THAT_VARY}


def _check_no_partial_file_is_complete(out: Path, where: str) -> None:
    """Whatever state a fault left: a checkpoint taken as complete loads, results.json is whole or absent."""
    for folder in out.glob("checkpoint-*"):
        if is_complete_checkpoint(folder):
            _weights(folder)  # raises on a torn safetensors file
            torch.load(folder / "optimizer.pt", weights_only=False)
            json.loads((folder / "trainer_state.json").read_text())
    if (out / "results.json").exists():
        json.loads((out / "results.json").read_text())
    if (out / "pre_rl.json").exists():
        json.loads((out / "pre_rl.json").read_text())
        if json.loads((out / "pre_rl.json").read_text())["model"]:
            assert (out / "warm_start" / "model.safetensors").is_file(), where


def _assert_equal_to_reference(out: Path, ref: Path, where: str) -> None:
    a, b = _weights(ref / "checkpoint"), _weights(out / "checkpoint")
    assert a.keys() == b.keys(), where
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{where}: {len(differ)} of {len(a)} tensors differ from the uninterrupted run, e.g. {differ[:3]}"
    assert _results(out) == _results(ref), where
    ma, mb = _metrics(ref), _metrics(out)
    assert [r["step"] for r in mb] == [r["step"] for r in ma] == list(range(1, MAX_STEPS + 1)) + [MAX_STEPS], where
    for ra, rb in zip(ma, mb):
        changed = {k for k in ra.keys() | rb.keys()
                   if k not in TIMING_KEYS and not k.endswith("_ms") and ra.get(k) != rb.get(k)}  # *_ms: timings
        assert not changed, f"{where}: metrics.jsonl step {ra['step']}: {sorted(changed)} differ"
    assert (out / "plots").is_dir() and any((out / "plots").iterdir()), where


_REFERENCES: dict[tuple, Path] = {}


@pytest.fixture(scope="session")
def reference(tmp_path_factory):
    """``reference(method, extra)``: the folder of an uninterrupted run of that configuration (built once)."""

    def get(method: str = "pepo", extra: tuple[str, ...] = ()) -> Path:
        key = (method, extra)
        if key not in _REFERENCES:
            out = tmp_path_factory.mktemp(f"reference-{method}") / "run"
            rc, text, seconds = _run(_args(method, None, extra) + ["--output_dir", str(out)])
            assert rc == 0, text[-3000:]
            _REFERENCES[key] = out
            TABLE.append(f"(uninterrupted {method} reference: {seconds:.1f} s)")
        return _REFERENCES[key]

    return get


@pytest.fixture(scope="session", autouse=True)
def _fault_table():
    """Print the table of faults fired in this session (seen with ``-s``)."""
    yield
    if TABLE:
        print("\nfault | where | outcome | time to recover\n" + "\n".join(TABLE))


def _chain(out: Path, args: list[str], faults: list[str]) -> None:
    """Run ``args`` on ``out`` once per fault (each armed in turn), then once more to the end; check every stop.

    A kill must end the process with SIGKILL (the fault fired in that run); a disk error with one
    ``pepo: error:`` line naming the file and the way out, and no traceback.
    """
    argv = args + ["--output_dir", str(out), "--resume_from_checkpoint", "auto"]
    pending = None  # the previous fault, recovered by this run
    for fault in faults + [None]:
        rc, text, seconds = _run(argv, fault)
        resumed = re.search(r"resuming from \S+ \(step (\d+)\)", text)
        if pending is not None:
            TABLE.append(f"{pending} | {out.name} | resumed from step {resumed.group(1) if resumed else 'start'} | "
                         f"{seconds:.1f} s to the next stop")
        where = f"{out.name}: run with PEPO_FAULT={fault}"
        assert "Traceback" not in text or rc == -signal.SIGKILL, f"{where}\n{text[-3000:]}"
        if fault is None:
            assert rc == 0, f"{where}\n{text[-3000:]}"
        elif fault.endswith((":enospc", ":eacces")):
            errors = [line for line in text.splitlines() if line.startswith("pepo: error:")]
            assert rc == 2 and len(errors) == 1, f"{where}: rc {rc}\n{text[-3000:]}"
            assert "rerun the same command with --resume_from_checkpoint auto" in errors[0], errors[0]
            assert re.search(r"cannot write \S+", errors[0]), errors[0]
        else:
            assert rc == -signal.SIGKILL, f"{where}: the fault did not fire (rc {rc})\n{text[-3000:]}"
        if pending is not None and pending.startswith("plots:"):  # results.json was written: only the plots
            assert "holds a finished run (results.json); nothing to resume" in text, text[-3000:]
        elif pending is not None and pending.split(":")[0] not in ("warm_start", "pre_rl"):
            assert resumed, f"{where}: the run after {pending} did not resume\n{text[-3000:]}"
        _check_no_partial_file_is_complete(out, where)
        pending = fault


#: the default chain (rotation keeps 2, as the demo recipe does); the slow chains add the other points
DEFAULT_CHAIN = [
    "checkpoint_model:3",    # writing checkpoint-3: model written, optimizer not
    "rotation:1",            # checkpoint-3 complete, checkpoint-1 being deleted (marker already removed)
    "metrics:2",             # in the middle of step 5's metrics.jsonl line
    "checkpoint_state:1:enospc",  # disk full while checkpoint-5 is written
    # resumed from checkpoint-4, which rotation deletes at step 6: trained, scored, inside the write of results.json
    "results:1",
]


def test_faults_during_a_run_with_rotation_2_end_bit_identical(reference, tmp_path):
    ref = reference()
    out = tmp_path / "limit2"
    _chain(out, _args(limit=2), DEFAULT_CHAIN)
    _assert_equal_to_reference(out, ref, "save_total_limit 2")
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-5", "checkpoint-6"]


@pytest.mark.slow
@pytest.mark.parametrize("limit", [1, None], ids=["limit1", "no-limit"])
def test_faults_at_set_up_and_finish_with_rotation_1_and_off(reference, tmp_path, limit):
    ref = reference()
    out = tmp_path / f"limit{limit}"
    chain = [
        "warm_start:1",          # warm_start/ weights written, processor and pre_rl.json not
        "pre_rl:1",              # inside the write of pre_rl.json
        "checkpoint_rng:2",      # checkpoint-2: optimizer written, RNG state and trainer_state.json not
        *(["rotation:1"] if limit else []),
        "generation:2", "checkpoint_model:1", "checkpoint_marker:1", "metrics:1", "backward:2",
        "checkpoint_state:1:eacces",  # the run folder turns read-only while checkpoint-6 is written
        "final_model:1",         # trained, before the final model is saved
        "plots:1",               # results.json written, plots not
    ]
    _chain(out, _args(limit=limit), chain)
    _assert_equal_to_reference(out, ref, f"save_total_limit {limit}")
    kept = len(list(out.glob("checkpoint-*")))
    assert kept == (limit or MAX_STEPS) or (limit is None and kept >= 2), kept


@pytest.mark.slow
def test_sigterm_and_a_passed_on_repeat_save_a_checkpoint_then_resume_bit_identical(reference, tmp_path):
    """A scheduler's SIGTERM (repeated at once, as torchrun passes on the signal it got) saves and stops."""
    ref = reference()
    out = tmp_path / "sigterm"
    argv = _args() + ["--output_dir", str(out), "--resume_from_checkpoint", "auto"]
    log = tmp_path / "sigterm.log"
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "fault_runner.py"), *argv], cwd=ROOT, env=_env(),
                            stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while not ((out / "metrics.jsonl").is_file() and any(
            '"step": 2' in line for line in (out / "metrics.jsonl").read_text().splitlines())):
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)  # within the grace: the same request, not a second one
    proc.wait(timeout=300)
    text = log.read_text()
    assert proc.returncode == 130, text[-3000:]
    assert "SIGTERM: finishing this step" in text and "Traceback" not in text, text[-3000:]
    stopped = int(re.search(r"stopped at step (\d+)", text).group(1))
    assert stopped < MAX_STEPS and is_complete_checkpoint(out / f"checkpoint-{stopped}")
    rc, text, seconds = _run(argv)
    assert rc == 0 and f"(step {stopped})" in text, text[-3000:]
    TABLE.append(f"SIGTERM x2 | after step 2 logged | saved checkpoint-{stopped}, resumed | {seconds:.1f} s")
    _assert_equal_to_reference(out, ref, "SIGTERM")


def _torchrun(args: list[str], log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "tests" / "fault_runner.py"), *args]
    # Its own session, so that a signal can go to the whole job, as a terminal's Ctrl-C or a scheduler's does.
    return subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _signal_job_at_step(proc: subprocess.Popen, out: Path, step: int, sig: int, log: Path,
                        replaced: int | None = None) -> None:
    deadline = time.monotonic() + 600
    path = out / "metrics.jsonl"
    while True:
        fresh = replaced is None or (path.is_file() and path.stat().st_ino != replaced)
        if fresh and path.is_file() and any(f'"step": {step},' in line for line in path.read_text().splitlines()):
            break
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.05)
    os.killpg(proc.pid, sig)  # every process of the job: torchrun passes it on to the workers once more


@pytest.mark.slow
def test_sigterm_and_ctrl_c_under_torchrun_save_on_every_rank_and_resume_bit_identical(tmp_path):
    args = _args(limit=2)
    full, cut = tmp_path / "full", tmp_path / "cut"
    start = time.perf_counter()
    proc = _torchrun(args + ["--output_dir", str(full)], tmp_path / "full.log")
    assert proc.wait(timeout=900) == 0, (tmp_path / "full.log").read_text()[-3000:]
    reference_seconds = time.perf_counter() - start
    argv = args + ["--output_dir", str(cut), "--resume_from_checkpoint", "auto"]
    stops = []
    for n, (sig, at) in enumerate([(signal.SIGTERM, 2), (signal.SIGINT, 4)]):
        log = tmp_path / f"cut{n}.log"
        before = (cut / "metrics.jsonl").stat().st_ino if (cut / "metrics.jsonl").is_file() else None
        proc = _torchrun(argv, log)
        _signal_job_at_step(proc, cut, at, sig, log, replaced=before)
        proc.wait(timeout=300)
        text = log.read_text()
        found = re.search(r"stopped at step (\d+), checkpoint saved to (\S+);", text)
        assert found, text[-3000:]
        folder = Path(found.group(2))
        marker = json.loads((folder / MARKER).read_text())
        assert marker["files"] == ["pepo_state_0.pt", "pepo_state_1.pt"] and is_complete_checkpoint(folder), marker
        assert marker["config"]["processes"] == 2
        stops.append(int(found.group(1)))
    start = time.perf_counter()
    proc = _torchrun(argv, tmp_path / "last.log")
    assert proc.wait(timeout=900) == 0, (tmp_path / "last.log").read_text()[-3000:]
    TABLE.append(f"SIGTERM, then SIGINT to the torchrun job | after steps 2 and 4 logged | saved checkpoint-{stops[0]} "
                 f"and -{stops[1]} on both ranks, resumed | {time.perf_counter() - start:.1f} s (uninterrupted "
                 f"2-process run {reference_seconds:.1f} s)")
    _assert_equal_to_reference(cut, full, "torchrun")


# --- damaged and hostile run folders --------------------------------------------------------------------------


def _damaged_copy(ref: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(ref, out)
    (out / "results.json").unlink()  # an unfinished run: auto resumes
    for folder in out.glob("checkpoint-*"):
        if int(folder.name.split("-")[1]) < MAX_STEPS - 1:
            shutil.rmtree(folder)  # keep checkpoint-5 and -6, as rotation 2 does
    return out


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("pepo: error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture()
def cli(monkeypatch):
    from pepo.cli import main
    from pepo.rewards import REWARDS

    sys.path.insert(0, str(ROOT / "tests"))
    from resume_runner import varied_reward

    sys.path.pop(0)
    monkeypatch.setitem(REWARDS, "varied", varied_reward)
    return main


def test_truncated_model_falls_back_to_the_newest_intact_checkpoint_and_says_so(reference, tmp_path):
    ref = reference()
    out = _damaged_copy(ref, tmp_path)
    model = out / "checkpoint-6" / "model.safetensors"
    with model.open("r+b") as f:
        f.truncate(model.stat().st_size // 2)
    rc, text, seconds = _run(_args() + ["--output_dir", str(out), "--resume_from_checkpoint", "auto"])
    assert rc == 0, text[-3000:]
    assert re.search(r"falling back to checkpoint-5, the newest intact checkpoint \(damaged: checkpoint-6: "
                     r"\S+model.safetensors is \d+ bytes, \d+ when the checkpoint was saved", text), text[-3000:]
    assert "resuming from" in text and "(step 5)" in text
    TABLE.append(f"truncated model.safetensors | checkpoint-6 | fell back to checkpoint-5 | {seconds:.1f} s")
    _assert_equal_to_reference(out, ref, "truncated model")


def test_damaged_checkpoints_give_one_error_line_with_the_way_out(reference, tmp_path, cli, capsys):
    ref = reference()
    out = _damaged_copy(ref, tmp_path)
    argv = _args() + ["--output_dir", str(out)]
    six, five = out / "checkpoint-6", out / "checkpoint-5"
    # A truncated model.safetensors, asked for by path: named, with the checkpoint to use instead.
    with (six / "model.safetensors").open("r+b") as f:
        f.truncate(100)
    assert cli(argv + ["--resume_from_checkpoint", str(six)]) == 2
    line = _one_error_line(capsys)
    assert f"{six / 'model.safetensors'} is 100 bytes" in line and f"resume from {five}, the newest complete" in line
    # A marker whose step disagrees with trainer_state.json.
    shutil.rmtree(six)
    shutil.copytree(ref / "checkpoint-6", six)
    state = json.loads((six / "trainer_state.json").read_text())
    (six / "trainer_state.json").write_text(json.dumps({**state, "global_step": 4}))
    assert cli(argv + ["--resume_from_checkpoint", str(six)]) == 2
    line = _one_error_line(capsys)
    assert f"{six / MARKER} says step 6 but {six / 'trainer_state.json'} says step 4" in line, line
    # A missing optimizer.pt in every checkpoint: nothing intact to fall back to, and no silent fresh start.
    for folder in (five, six):
        shutil.rmtree(folder)
        shutil.copytree(ref / folder.name, folder)
        (folder / "optimizer.pt").unlink()
    assert cli(argv + ["--resume_from_checkpoint", "auto"]) == 2
    line = _one_error_line(capsys)
    assert f"no intact checkpoint in {out}" in line and f"{six / 'optimizer.pt'} is missing" in line, line
    assert "restore the file, or start fresh with another --output_dir" in line
    assert five.is_dir() and six.is_dir()  # nothing deleted


@pytest.mark.parametrize("change", [("--method", "grpo"), ("--per_device_train_batch_size", "8")],
                         ids=["method", "batch"])
def test_a_checkpoint_of_another_configuration_is_refused(reference, tmp_path, cli, capsys, change):
    ref = reference()
    out = _damaged_copy(ref, tmp_path)
    argv = _args() + ["--output_dir", str(out), "--resume_from_checkpoint", "auto"]
    argv[argv.index(change[0]) + 1] = change[1]
    assert cli(argv) == 2
    line = _one_error_line(capsys)
    saved = {"--method": "'pepo'", "--per_device_train_batch_size": "4"}[change[0]]
    assert f"{out / 'checkpoint-6' / MARKER}: checkpoint-6 was saved with {change[0][2:]} {saved}" in line, line
    assert "resume with the options (and number of processes) it was saved with" in line


def test_another_model_has_another_fingerprint(tiny_tokenizer):
    from pepo.models.tiny import TinyVLMSpec, build_tiny_qwen2_5_vl
    from pepo.resume import model_fingerprint

    a, _ = build_tiny_qwen2_5_vl(tiny_tokenizer, seed=0)
    b, _ = build_tiny_qwen2_5_vl(tiny_tokenizer, seed=1)  # same architecture, other weights: same fingerprint
    c, _ = build_tiny_qwen2_5_vl(tiny_tokenizer, TinyVLMSpec(num_layers=TinyVLMSpec().num_layers + 1))
    assert model_fingerprint(a) == model_fingerprint(b)
    assert model_fingerprint(a) != model_fingerprint(c)
    assert model_fingerprint(a).startswith("Qwen2_5_VLForConditionalGeneration/")


def test_rotation_removes_the_marker_before_the_files(tmp_path, monkeypatch):
    from pepo import faults, resume

    for step in (1, 2, 3):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
        (folder / "model.safetensors").write_bytes(b"x" * 10)
        resume.write_marker(folder, step, [])
    seen = []
    monkeypatch.setattr(faults, "_ARMED", ("rotation", 99, "kill"))  # counts passes, never fires
    monkeypatch.setattr(faults, "_hits", 0)
    monkeypatch.setattr(resume, "fault_point", lambda name, f=None: seen.append(
        (Path(f).name, (Path(f) / MARKER).exists(), (Path(f) / "model.safetensors").exists())))
    assert resume.rotate_checkpoints(tmp_path, 1) == [tmp_path / "checkpoint-1", tmp_path / "checkpoint-2"]
    assert seen == [("checkpoint-1", False, True), ("checkpoint-2", False, True)]  # marker gone, files not yet
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-3"]
    assert checkpoint_problem(tmp_path / "checkpoint-3") is None


def test_fault_spec_errors_name_the_format():
    from pepo.faults import _parse

    assert _parse("metrics:2") == ("metrics", 2, "kill") and _parse("results:1:enospc") == ("results", 1, "enospc")
    for bad in ("metrics", "metrics:0", "metrics:x", "metrics:1:boom"):
        with pytest.raises(ValueError, match="expected <point>:<count>"):
            _parse(bad)


# --- every method resumes exactly --------------------------------------------------------------------------------


def test_perception_mask_counter_is_saved_and_restored(tiny_vlm, tmp_path):
    """PAPO / VPPO mask seeds come from ``_perception_calls`` (which evaluation generations also advance): it
    travels with every checkpoint, through the trainer's generic ``_resume_attributes``."""
    from pepo.resume import load_process_state
    from tests.test_trainer import make_trainer

    trainer = make_trainer(tiny_vlm, tmp_path, method="papo_g", max_steps=1, save_strategy="steps", save_steps=1,
                           per_device_train_batch_size=4, num_generations=2, max_completion_length=4)
    trainer.train()
    checkpoint = tmp_path / "out" / "checkpoint-1"
    assert trainer._perception_calls == (0, 0)  # step 0's first generation call
    trainer._perception_calls = (1, 3)  # as if evaluation generations had run at step 1
    trainer._save_checkpoint(trainer.model, None)
    saved = load_process_state(checkpoint, 0)["attributes"]
    assert saved == {"_perception_calls": (1, 3)}
    trainer._perception_calls = (-1, 0)
    trainer._restore_resume_state(str(checkpoint))
    assert trainer._perception_calls == (1, 3)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["papo_g", "vppo", "pepo_d"])
def test_every_method_resumes_bit_identical(reference, tmp_path, method):
    extra = ("--beta", "0.01") if method == "papo_g" else ()
    ref = reference(method, extra)
    out = tmp_path / method
    _chain(out, _args(method, 2, extra), ["backward:3", "generation:2"])
    _assert_equal_to_reference(out, ref, method)


# --- evaluation under faults -------------------------------------------------------------------------------------


def _eval(model: Path, out: Path, fault: str | None = None) -> tuple[int, str, float]:
    return _run(["eval", "--model", str(model), "--task", "synthetic", "--limit", "4", "--num_samples", "2",
                 "--max_new_tokens", "4", "--output_dir", str(out)], fault)


def test_eval_killed_inside_a_write_loses_and_duplicates_nothing(reference, tmp_path):
    model = reference() / "checkpoint"
    full, cut = tmp_path / "full", tmp_path / "cut"
    rc, text, _ = _eval(model, full)
    assert rc == 0, text[-3000:]
    rc, text, _ = _eval(model, cut, "eval_samples:3")  # inside the 3rd prompt's two lines
    assert rc == -signal.SIGKILL, text[-3000:]
    lines = (cut / "samples.jsonl").read_text().splitlines()
    assert len(lines) == 6 and not lines[-1].endswith("}"), lines  # 2 prompts whole, the 3rd's 2nd line torn
    rc, text, seconds = _eval(model, cut)
    assert rc == 0, text[-3000:]
    TABLE.append(f"eval_samples:3 | inside prompt 3's samples.jsonl write | rerun completed | {seconds:.1f} s")
    assert (cut / "samples.jsonl").read_text() == (full / "samples.jsonl").read_text()
    drop = {"seconds", "timing", "environment"}
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (full, cut))
    assert {k: v for k, v in sa.items() if k not in drop} == {k: v for k, v in sb.items() if k not in drop}


def test_eval_rewrite_of_samples_failing_midway_keeps_the_complete_prompts(tmp_path, monkeypatch):
    """A rerun first rewrites samples.jsonl without the torn prompt; that rewrite failing must lose nothing."""
    from pepo import faults
    from pepo.eval.runner import read_samples

    path = tmp_path / "samples.jsonl"
    whole = [{"id": p, "sample": k, "output": "x", "extracted": "x", "score": 1.0} for p in ("a", "b") for k in (0, 1)]
    text = "".join(json.dumps(r) + "\n" for r in whole) + '{"id": "c", "sam'
    path.write_text(text)
    monkeypatch.setattr(faults, "_ARMED", ("eval_rewrite", 1, "enospc"))
    monkeypatch.setattr(faults, "_hits", 0)
    with pytest.raises(OSError, match="No space left"):
        read_samples(path, 2)
    assert path.read_text() == text  # nothing lost; the torn line goes on the next try
    assert read_samples(path, 2) == {"a": whole[:2], "b": whole[2:]}
    assert path.read_text() == "".join(json.dumps(r) + "\n" for r in whole)
