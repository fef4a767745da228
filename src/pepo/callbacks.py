"""Trainer callbacks: metrics JSONL (one line per log event) and the held-out progress line."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from transformers import TrainerCallback

from pepo.faults import fault_write

__all__ = ["JsonlMetricsCallback", "read_metrics", "truncate_metrics"]


class JsonlMetricsCallback(TrainerCallback):
    """Append every ``on_log`` event to ``path`` as JSON, with the global step; flushed per line."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        record = {"step": state.global_step}
        for key, value in logs.items():
            if isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value)):
                record[key] = value
        with self.path.open("a") as f:
            fault_write(f, json.dumps(record) + "\n", "metrics")


def read_metrics(path: str | Path) -> list[dict]:
    """Read a metrics JSONL written by :class:`JsonlMetricsCallback`."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def truncate_metrics(path: str | Path, step: int, keep_summary: bool = False) -> int:
    """Cut a metrics JSONL back to what was logged up to a checkpoint at ``step``; returns lines removed.

    The Trainer logs before it saves, so every line with ``step <= step`` was written before that
    checkpoint, except the end-of-training summary (``train_runtime``, ...), which a resumed run writes
    again. Lines after the checkpoint belong to the killed process and are logged again on resume, so
    each step ends up in the file exactly once. The file is replaced atomically. ``keep_summary``: the
    checkpoint is the last step (training had finished; a resume trains nothing and logs no summary again).
    """
    path = Path(path)
    if not path.is_file():
        return 0
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:  # the last line of a killed process may be cut short
            continue
        if record.get("step", 0) <= step and (keep_summary or "train_runtime" not in record):
            kept.append(line)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)
    return len(lines) - len(kept)
