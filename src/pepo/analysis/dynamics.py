"""Training dynamics of several runs overlaid (the paper's Figure 6): reward, response length,
mean visual similarity and mean token entropy per optimizer step, from each run's metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pepo.callbacks import read_metrics  # noqa: E402

__all__ = ["DYNAMICS_PANELS", "dynamics_series", "plot_dynamics"]

#: (metric key, panel title, y label)
DYNAMICS_PANELS = (
    ("reward", "Training reward", "mean reward per completion"),
    ("completions/mean_length", "Response length", "mean completion length (tokens)"),
    ("pepo/vs_mean", "Mean visual similarity", "cosine to image tokens (mean over layers)"),
    ("pepo/entropy_mean", "Mean token entropy", "entropy (nats)"),
)


def _label(run: Path) -> str:
    config = run / "config.yaml"
    if config.is_file():
        import yaml

        values = yaml.safe_load(config.read_text()) or {}
        return f"{run.name} ({values.get('method', '?')})"
    return run.name


def dynamics_series(run_dirs: Sequence[str | Path]) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """label -> metric key -> [(step, value), ...] for each panel metric a run logged."""
    out: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for run in map(Path, run_dirs):
        path = run / "metrics.jsonl"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: is {run} a pepo run folder?")
        records = read_metrics(path)
        out[_label(run)] = {key: [(r["step"], r[key]) for r in records if key in r] for key, _, _ in DYNAMICS_PANELS}
    return out


def plot_dynamics(run_dirs: Sequence[str | Path], out_dir: str | Path, title: str = "") -> Path:
    """Write ``dynamics.png`` (2 x 2 panels, one line per run) and ``dynamics.json`` (the plotted numbers)."""
    series = dynamics_series(run_dirs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.5), dpi=110)
    for ax, (key, panel, ylabel) in zip(axes.flat, DYNAMICS_PANELS):
        for label, metrics in series.items():
            points = metrics[key]
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], marker=".", label=label)
        ax.set_title(panel, fontsize=10)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(ylabel, fontsize=8)
        ax.grid(alpha=0.3)
        if not ax.lines:
            ax.text(0.5, 0.5, "not logged by these runs", ha="center", va="center", transform=ax.transAxes)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8)
    fig.suptitle(title or "Training dynamics: " + ", ".join(series), fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 0.96))
    png = out_dir / "dynamics.png"
    fig.savefig(png)
    plt.close(fig)
    (out_dir / "dynamics.json").write_text(json.dumps(series, indent=1))
    return png
