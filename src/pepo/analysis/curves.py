"""PNG plots of a run's training curves from its metrics JSONL."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # headless: runs on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402

from pepo.callbacks import read_metrics  # noqa: E402

__all__ = ["PANELS", "plot_run"]

#: (file stem, title, y label, metric keys drawn on the panel)
PANELS: Sequence[tuple[str, str, str, Sequence[str]]] = (
    ("reward", "Training reward", "mean reward per completion", ("reward",)),
    ("visual_similarity", "Mean visual similarity of completion tokens", "cosine (mean over layers)", ("pepo/vs_mean",)),
    ("entropy", "Mean token entropy", "entropy (nats)", ("pepo/entropy_mean",)),
    (
        "weight_percentiles",
        "PEPO token-weight percentiles (before the schedule)",
        "weight (mean 1 per response)",
        ("pepo/weight_p0", "pepo/weight_p20", "pepo/weight_p40", "pepo/weight_p60", "pepo/weight_p80", "pepo/weight_p100"),
    ),
)


def plot_run(metrics_path: str | Path, out_dir: str | Path, title: str = "") -> list[Path]:
    """Write one PNG per panel in ``PANELS`` that has data; returns the written paths."""
    records = read_metrics(metrics_path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for stem, panel_title, ylabel, keys in PANELS:
        series = {k: [(r["step"], r[k]) for r in records if k in r] for k in keys}
        series = {k: v for k, v in series.items() if v}
        if not series:
            continue
        fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
        for key, points in series.items():
            ax.plot([p[0] for p in points], [p[1] for p in points], marker=".", label=key.split("/")[-1])
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{panel_title}\n{title}" if title else panel_title, fontsize=10)
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize=7, ncol=3)
        fig.tight_layout()
        path = out_dir / f"{stem}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written
