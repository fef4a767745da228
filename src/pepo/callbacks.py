"""Trainer callbacks: metrics JSONL (one line per log event) and the held-out progress line."""

from __future__ import annotations

import json
import math
from pathlib import Path

from transformers import TrainerCallback

__all__ = ["JsonlMetricsCallback", "read_metrics"]


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
            f.write(json.dumps(record) + "\n")


def read_metrics(path: str | Path) -> list[dict]:
    """Read a metrics JSONL written by :class:`JsonlMetricsCallback`."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
