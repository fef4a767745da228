"""Summarise before/after-RL accuracy over several runs (seeds): mean gain and its standard error.

    python -m pepo.analysis.seeds runs/demo_s0 runs/demo_s1 runs/demo_s2
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Sequence

__all__ = ["load_results", "gain_summary", "markdown_table"]


def load_results(run_dirs: Sequence[str | Path]) -> list[dict]:
    """Read ``results.json`` of each run folder; a folder without it raises FileNotFoundError naming it."""
    out = []
    for run in run_dirs:
        path = Path(run) / "results.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: is {run} a finished pepo run folder?")
        out.append({"run": str(run), **json.loads(path.read_text())})
    return out


def gain_summary(results: list[dict], key: str = "overall") -> dict[str, float]:
    """Mean and standard error (sample std / sqrt(n)) of ``after - before`` for ``key``, in accuracy points (0-100)."""
    gains = [100 * (r["after_rl"][key] - r["before_rl"][key]) for r in results]
    n = len(gains)
    mean = sum(gains) / n
    sd = math.sqrt(sum((g - mean) ** 2 for g in gains) / (n - 1)) if n > 1 else float("nan")
    return {"n": n, "mean_gain": mean, "std": sd, "stderr": sd / math.sqrt(n) if n > 1 else float("nan")}


def markdown_table(results: list[dict]) -> str:
    """Rows = runs, columns = before -> after per question type, then the mean gain row with its standard error."""
    keys = [k for k in results[0]["before_rl"] if k != "n"]
    lines = ["| run | seed | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for r in results:
        cells = [f"{100 * r['before_rl'][k]:.1f} -> {100 * r['after_rl'][k]:.1f}" for k in keys]
        lines.append(f"| {Path(r['run']).name} | {r.get('seed', '')} | " + " | ".join(cells) + " |")
    cells = []
    for k in keys:
        s = gain_summary(results, k)
        cells.append(f"{s['mean_gain']:+.1f} ± {s['stderr']:.1f}")
    lines.append("| mean gain ± s.e. | | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    runs = list(sys.argv[1:] if argv is None else argv)
    if not runs:
        print(__doc__)
        return 2
    results = load_results(runs)
    print(markdown_table(results))
    s = gain_summary(results)
    verdict = "yes" if s["mean_gain"] > 2 * s["stderr"] else "no"
    print(f"\noverall: mean gain {s['mean_gain']:+.2f} points, s.e. {s['stderr']:.2f} over {s['n']} runs; "
          f"gain > 2 s.e.: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
