"""``pepo watch RUN_DIR``: a terminal summary of a run folder, live, finished or killed.

Reads only files the run writes as it goes (``metrics.jsonl``, ``token_views/step_N.jsonl``,
``pre_rl.json`` / ``results.json``); a line or record cut short by a killed process is skipped, so
it works on a folder in any state. ``--follow`` reprints every few seconds until the run finishes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

__all__ = ["run_status", "summary", "watch_main"]

#: a run whose files changed less than this long ago is reported as running
LIVE_SECONDS = 120.0


def _metrics(path: Path) -> list[dict[str, Any]]:
    out = []
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:  # the last line of a killed process may be cut short
            continue
    return out


def _last(rows: list[dict[str, Any]], prefix: str) -> dict[str, Any]:
    """The last logged value of every key starting with ``prefix`` (with its step)."""
    found: dict[str, Any] = {}
    for row in rows:
        for key, value in row.items():
            if key.startswith(prefix):
                found[key] = (row.get("step"), value)
    return found


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def run_status(run: Path, now: float | None = None) -> str:
    """``finished``, ``running`` or ``stopped`` (killed or interrupted).

    ``results.json`` or an ended ``token_views/status.json`` means finished; otherwise the writer's
    pid in ``status.json`` decides on the same host; without one, a file changed within
    :data:`LIVE_SECONDS` means running.
    """
    import socket

    if (run / "results.json").is_file():
        return "finished"
    try:
        status = json.loads((run / "token_views" / "status.json").read_text())
    except (OSError, ValueError):
        status = None
    if status is not None:
        if status.get("ended"):
            return "finished"
        if status.get("host") == socket.gethostname():
            return "running" if _alive(int(status["pid"])) else "stopped"
    files = [run / "metrics.jsonl", *(run / "token_views").glob("step_*.jsonl")]
    times = [f.stat().st_mtime for f in files if f.is_file()]
    if times and (now if now is not None else time.time()) - max(times) < LIVE_SECONDS:
        return "running"
    return "stopped"


def summary(run: str | Path, top: int = 5) -> str:
    """The text ``pepo watch`` prints for a run folder."""
    from pepo.analysis.token_views import read_views

    run = Path(run)
    if not run.is_dir():
        raise FileNotFoundError(f"{run} is not a run folder")
    rows = _metrics(run / "metrics.jsonl")
    steps = [r["step"] for r in rows if "step" in r and "train_runtime" not in r]
    status = run_status(run)
    config = run / "config.yaml"
    max_steps = None
    if config.is_file():
        import yaml

        max_steps = (yaml.safe_load(config.read_text()) or {}).get("max_steps")
    lines = [f"run {run}: {status}" + (f", step {max(steps)}" if steps else ", no step logged yet")
             + (f" of {max_steps}" if max_steps and steps else "")]
    if status == "stopped":
        lines.append("  (the training process is gone and did not finish: killed or interrupted; "
                     "pepo train continues it with --resume_from_checkpoint auto)")
    for key, (step, value) in sorted(_last(rows, "reward").items()):
        if key in ("reward", "reward_std") or key.endswith("/mean"):
            lines.append(f"  {key:<40} {value:.4f}  (step {step})")
    # results.json (written at the end) holds both numbers; pre_rl.json (before RL) only the first
    for name in ("results.json", "pre_rl.json"):
        path = run / name
        if path.is_file():
            try:
                done = json.loads(path.read_text())
            except ValueError:
                continue
            before, after = done.get("before_rl") or {}, done.get("after_rl") or {}
            if "overall" in before:
                text = f"  held-out accuracy before RL {before['overall']:.3f}"
                if "overall" in after:
                    text += f", after RL {after['overall']:.3f}"
                lines.append(text)
                break
    weights = _last(rows, "pepo/weight_p")
    if weights:
        ordered = sorted(weights.items(), key=lambda kv: int(kv[0].rsplit("p", 1)[1]))
        step = ordered[-1][1][0]
        lines.append(f"  PEPO weight percentiles (step {step}): "
                     + "  ".join(f"{k.rsplit('/', 1)[1]} {v:.3f}" for k, (_, v) in ordered))
    views = read_views(run / "token_views")
    if views:
        latest = views[-1]
        lines.append(f"  token views: {len(views)} step(s), latest step {latest['step']} "
                     f"({latest['method']}, p = {latest['progress']:.3f})")
        by = next((q for q in ("weight", "vppo_dependency", "final_advantage", "entropy")
                   if q in latest["quantities"]), None)
        if by is not None:
            pairs = [(r["values"][by][i], r["tokens"][i], r["reward"])
                     for r in latest["rollouts"] for i in range(len(r["tokens"])) if r["values"][by][i] is not None]
            pairs.sort(key=lambda p: -p[0])
            lines.append(f"  top tokens by {by} at step {latest['step']}: "
                         + ", ".join(f"{json.dumps(t)} {v:.3f} (reward {'n/a' if r is None else f'{r:g}'})"
                                     for v, t, r in pairs[:top]))
        lines.append(f"  page: {(run / 'token_views' / 'index.html').resolve()}")
    else:
        lines.append("  no token views (train with --log_token_views_every N to write them)")
    return "\n".join(lines)


def watch_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="pepo watch", description="Summarise a run folder (live, finished or "
                                     "killed): reward, accuracy, PEPO weight percentiles, the top-weighted tokens "
                                     "of the latest token view, and the path of its page.")
    parser.add_argument("run", help="run folder (the output_dir of pepo train / pepo demo)")
    parser.add_argument("--follow", action="store_true", help="reprint every --interval seconds until the run "
                        "finishes (Ctrl-C stops)")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between refreshes (default 5)")
    parser.add_argument("--top", type=int, default=5, help="top-weighted tokens shown (default 5)")
    args = parser.parse_args(argv)
    try:
        while True:
            try:
                text = summary(args.run, args.top)
            except FileNotFoundError as err:
                print(f"pepo: error: {err}", file=sys.stderr)
                return 2
            if args.follow and sys.stdout.isatty():
                print("\033[2J\033[H", end="")
            print(text, flush=True)
            if not args.follow or run_status(Path(args.run)) == "finished":
                return 0
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return 0
