"""Where two runs of the same recipe part ways: compare their ``metrics.jsonl`` step by step.

    python -m pepo.analysis.divergence runs/s1 runs/s1_avx2

Used to show why the demo's RL stage differs between CPUs (README, "What is deterministic"): two runs
that sample the same tokens log the same rewards, while the gradient norm already differs in its last
digits (floating-point sums in another order); the first logged step whose reward differs is where a
sampled token flipped, after which the runs are different experiments.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Sequence

__all__ = ["read_metrics", "divergence", "main"]


def read_metrics(run: str | Path) -> dict[int, dict]:
    """``{step: logged metrics}`` of a run folder's ``metrics.jsonl`` (training-step lines only)."""
    path = Path(run) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {run} a pepo run folder?")
    rows = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if "reward" in row and "step" in row:
            rows[int(row["step"])] = row
    return rows


def divergence(a: dict[int, dict], b: dict[int, dict]) -> dict:
    """Per common step: both rewards and the relative grad-norm difference; plus the first step whose reward differs.

    Returns:
        ``{"rows": [(step, reward_a, reward_b, rel_grad_norm_diff)], "first_reward_difference": step | None}``.
    """
    rows, first = [], None
    for step in sorted(set(a) & set(b)):
        ra, rb = a[step]["reward"], b[step]["reward"]
        ga, gb = a[step].get("grad_norm"), b[step].get("grad_norm")
        rel = abs(ga - gb) / max(abs(ga), 1e-30) if ga is not None and gb is not None else float("nan")
        rows.append((step, ra, rb, rel))
        if first is None and ra != rb:
            first = step
    return {"rows": rows, "first_reward_difference": first}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        print(__doc__)
        return 2
    d = divergence(read_metrics(args[0]), read_metrics(args[1]))
    print(f"| step | reward {Path(args[0]).name} | reward {Path(args[1]).name} | grad-norm relative difference |")
    print("|---|---|---|---|")
    for step, ra, rb, rel in d["rows"]:
        print(f"| {step} | {ra:.4f} | {rb:.4f} | {rel:.1e} |")
    first = d["first_reward_difference"]
    print(f"\nfirst logged step with a different mean reward: {first if first is not None else 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
