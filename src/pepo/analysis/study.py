"""A seed study of the embedded demo: several methods x seeds (x RL-stage seeds), one command each way.

    python -m pepo.analysis.study run --out runs/study --methods grpo pepo --seeds 0 1 2 3 4 --jobs 2
    python -m pepo.analysis.study run --out runs/study --methods grpo pepo --seeds 0 1 2 3 4 --rl_seed_offset 100
    python -m pepo.analysis.study report runs/study --baseline grpo --pair dapo:pepo_d > docs/demo_study.md

``run`` launches ``pepo demo --seed S --method M`` for every pair, ``--jobs`` at a time, each with one torch
thread. All methods of a seed start from the same warm start, trained once and saved under
``OUT/warm_start/sS`` (``--warm_start_dir``). With ``--rl_seed_offset K`` the RL stage alone is re-seeded
with ``S + K`` (``--rl_seed``): same warm start, same data, different sampling and data order, which is how
another CPU perturbs a run (see the README). Finished runs (``results.json`` present) are skipped, so a
killed study resumes.

``report`` reads every run folder under OUT and prints, per method and RL-seed offset, the before -> after
table with mean gain and standard error, then each method's gain against the baseline paired by
(seed, RL seed), with an exact sign-flip permutation test, and the machine and versions the runs recorded.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Sequence

from pepo.analysis.seeds import gain_summary, load_results, markdown_table
from pepo.environment import environment_line

__all__ = ["run_name", "paired_comparison", "holm", "mean_step_time", "report", "main"]


def run_name(method: str, seed: int, rl_seed_offset: int) -> str:
    """Folder name of one run: ``pepo_s3`` or, with an RL-seed offset, ``pepo_s3_rl+100``."""
    return f"{method}_s{seed}" + (f"_rl+{rl_seed_offset}" if rl_seed_offset else "")


def _command(out: Path, method: str, seed: int, offset: int, extra: Sequence[str]) -> list[str]:
    cmd = [sys.executable, "-m", "pepo.cli", "demo", "--method", method, "--seed", str(seed),
           "--warm_start_dir", str(out / "warm_start" / f"s{seed}"),
           "--output_dir", str(out / run_name(method, seed, offset)), "--torch_threads", "1"]
    if offset:
        cmd += ["--rl_seed", str(seed + offset)]
    return cmd + list(extra)


def _run_all(out: Path, methods: Sequence[str], seeds: Sequence[int], offset: int, jobs: int,
             extra: Sequence[str]) -> int:
    todo = [(m, s) for m, s in itertools.product(methods, seeds)
            if not (out / run_name(m, s, offset) / "results.json").is_file()]
    # The first run of each seed trains and saves its warm start; the others of that seed wait for it.
    pending = sorted(todo, key=lambda ms: (methods.index(ms[0]) > 0, ms[1]))
    seeds_warming: set[int] = set()
    running: list[tuple[subprocess.Popen, str, float, int]] = []
    failed = 0
    (out / "logs").mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    print(f"{len(todo)} runs to do ({len(methods) * len(seeds) - len(todo)} already finished), {jobs} at a time",
          flush=True)
    while pending or running:
        for entry in list(running):
            proc, name, start, _ = entry
            if proc.poll() is not None:
                running.remove(entry)
                status = "ok" if proc.returncode == 0 else f"FAILED (exit {proc.returncode}; see logs/{name}.log)"
                failed += proc.returncode != 0
                print(f"  {name}: {status} in {time.perf_counter() - start:.0f} s", flush=True)
        seeds_warming = {s for s in seeds_warming
                         if not (out / "warm_start" / f"s{s}" / "warm_start.json").is_file()
                         and any(seed == s for *_, seed in running)}
        for m, s in list(pending):
            if len(running) >= jobs:
                break
            ready = (out / "warm_start" / f"s{s}" / "warm_start.json").is_file()
            if not ready and s in seeds_warming:
                continue
            pending.remove((m, s))
            if not ready:
                seeds_warming.add(s)
            name = run_name(m, s, offset)
            log = open(out / "logs" / f"{name}.log", "w")
            running.append((subprocess.Popen(_command(out, m, s, offset, extra), stdout=log, stderr=subprocess.STDOUT,
                                             env=env), name, time.perf_counter(), s))
            print(f"  started {name}", flush=True)
        time.sleep(1.0)
    return 1 if failed else 0


def _sign_flip_p(diffs: Sequence[float]) -> float:
    """Two-sided exact p-value of the paired sign-flip permutation test (H0: differences symmetric about 0)."""
    n = len(diffs)
    observed = abs(sum(diffs))
    hits = sum(abs(sum(d if b else -d for d, b in zip(diffs, bits))) >= observed - 1e-12
               for bits in itertools.product((0, 1), repeat=n))
    return hits / 2 ** n


def paired_comparison(results_a: list[dict], results_b: list[dict], key: str = "overall") -> dict[str, float]:
    """Gain of method B minus gain of method A, paired by (seed, RL seed); accuracy points.

    Returns:
        ``{"n", "mean_diff", "stderr", "t", "p_sign_flip", "b_better"}``: ``b_better`` counts pairs where B
        gained more. Pairs present in only one list are ignored.
    """
    def gains(results: list[dict]) -> dict[tuple, float]:
        return {(r.get("seed"), r.get("rl_seed", r.get("seed"))): 100 * (r["after_rl"][key] - r["before_rl"][key])
                for r in results}

    ga, gb = gains(results_a), gains(results_b)
    common = sorted(set(ga) & set(gb), key=str)
    diffs = [gb[k] - ga[k] for k in common]
    n = len(diffs)
    mean = sum(diffs) / n if n else float("nan")
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1)) if n > 1 else float("nan")
    se = sd / math.sqrt(n) if n > 1 else float("nan")
    return {"n": n, "mean_diff": mean, "stderr": se, "t": mean / se if se and se > 0 else float("nan"),
            "p_sign_flip": _sign_flip_p(diffs) if n else float("nan"), "b_better": sum(d > 0 for d in diffs)}


def _group(out: Path) -> dict[tuple[str, int], list[dict]]:
    groups: dict[tuple[str, int], list[dict]] = defaultdict(list)
    runs = sorted(p.parent for p in out.glob("*/results.json"))
    for r in load_results(runs):
        offset = (r.get("rl_seed", r["seed"]) or 0) - r["seed"]
        groups[(r["method"], offset)].append(r)
    for rs in groups.values():
        rs.sort(key=lambda r: r["seed"])
    return groups


def mean_step_time(run: str | Path) -> float | None:
    """Mean of TRL's logged ``step_time`` (seconds per optimizer step) in a run's ``metrics.jsonl``; None if absent."""
    path = Path(run) / "metrics.jsonl"
    if not path.is_file():
        return None
    times = [row["step_time"] for row in map(json.loads, path.read_text().splitlines()) if "step_time" in row]
    return sum(times) / len(times) if times else None


def _summary_table(groups: dict[tuple[str, int], list[dict]], baseline: str | None) -> list[str]:
    lines = ["| method | RL seed | runs | mean gain ± s.e. (points) | runs that lost | s / step | vs "
             f"{baseline or 'first'} |", "|---|---|---|---|---|---|---|"]
    times = {key: [t for t in (mean_step_time(r["run"]) for r in rs) if t is not None] for key, rs in groups.items()}
    for (method, offset), rs in sorted(groups.items()):
        s = gain_summary(rs)
        lost = sum(r["after_rl"]["overall"] < r["before_rl"]["overall"] for r in rs)
        t = times[(method, offset)]
        base = times.get((baseline, offset)) if baseline else None
        step = f"{sum(t) / len(t):.2f}" if t else "n/a"
        ratio = f"{(sum(t) / len(t)) / (sum(base) / len(base)):.2f}x" if t and base else "n/a"
        lines.append(f"| {method} | seed{' + ' + str(offset) if offset else ''} | {s['n']} | "
                     f"{s['mean_gain']:+.1f} ± {s['stderr']:.1f} | {lost} | {step} | {ratio} |")
    return lines


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order (NaN stays NaN and is not counted)."""
    finite = sorted((p, i) for i, p in enumerate(p_values) if p == p)
    out = [float("nan")] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(finite):
        running = max(running, min(1.0, (len(finite) - rank) * p))
        out[i] = running
    return out


def report(out: Path, baseline: str | None = None, pairs: Sequence[tuple[str, str]] = ()) -> str:
    """The Markdown report of a study folder (see the module docstring).

    ``baseline``: pair every other method against it; ``pairs``: more ``(baseline, method)`` comparisons.
    """
    groups = _group(out)
    if not groups:
        raise FileNotFoundError(f"no finished runs (*/results.json) under {out}")
    lines: list[str] = []
    envs = {environment_line(r["environment"]) for rs in groups.values() for r in rs if "environment" in r}
    lines.append("Machine and versions: " + ("; ".join(sorted(envs)) if envs else "not recorded"))
    lines += ["", "### Summary", ""] + _summary_table(groups, baseline)
    for (method, offset), rs in sorted(groups.items()):
        s = gain_summary(rs)
        losers = sum(r["after_rl"]["overall"] < r["before_rl"]["overall"] for r in rs)
        title = f"{method}, RL seed = seed" + (f" + {offset}" if offset else "")
        lines += ["", f"### {title}", "", markdown_table(rs), "",
                  f"overall: mean gain {s['mean_gain']:+.2f} points, s.e. {s['stderr']:.2f} over {s['n']} runs; "
                  f"gain > 3 s.e.: {'yes' if s['mean_gain'] > 3 * s['stderr'] else 'no'}; "
                  f"runs that lost accuracy: {losers}; mean train time "
                  f"{sum(r['seconds'] for r in rs) / len(rs):.0f} s"]
    comparisons = [(baseline, method) for (method, _) in sorted(groups) if baseline and method != baseline]
    comparisons += [pair for pair in pairs if pair not in comparisons]
    rows = []
    for base_method, method in dict.fromkeys(comparisons):
        for (m, offset), rs in sorted(groups.items()):
            base = groups.get((base_method, offset))
            if m == method and base:
                rows.append((method, base_method, offset, paired_comparison(base, rs)))
    if rows:
        adjusted = holm([c["p_sign_flip"] for *_, c in rows])
        lines += ["", "### Paired by (seed, RL seed)", "",
                  f"Each row: the method's gain minus its baseline's, over the runs both have; exact two-sided sign-flip "
                  f"test, and Holm's adjustment over the {len(rows)} comparisons of this table. With n pairs the "
                  f"smallest possible p is 2 / 2^n (n = 5: 0.0625, n = 6: 0.031).", "",
                  "| method | baseline | RL seed | pairs | gain - baseline gain (points) | paired t | sign-flip p "
                  "| Holm p | method better |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for (method, base_method, offset, c), p_holm in zip(rows, adjusted):
            lines.append(f"| {method} | {base_method} | seed{' + ' + str(offset) if offset else ''} | {c['n']} | "
                         f"{c['mean_diff']:+.2f} ± {c['stderr']:.2f} | {c['t']:.2f} | {c['p_sign_flip']:.3f} | "
                         f"{p_holm:.3f} | {c['b_better']}/{c['n']} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pepo.analysis.study", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run the grid of demo runs (resumable)")
    r.add_argument("--out", required=True, type=Path)
    r.add_argument("--methods", nargs="+", default=["grpo", "pepo"],
                   help="registered method names (pepo.methods; `all` = every built-in method), e.g. grpo pepo vppo")
    r.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    r.add_argument("--rl_seed_offset", type=int, default=0, help="re-seed the RL stage alone with seed + this")
    r.add_argument("--jobs", type=int, default=2, help="runs at a time (one torch thread each)")
    r.add_argument("extra", nargs=argparse.REMAINDER, help="after --: more `pepo demo` options for every run")
    p = sub.add_parser("report", help="print the Markdown tables of a study folder")
    p.add_argument("out", type=Path)
    p.add_argument("--baseline", default=None, help="method to pair every other method against, e.g. grpo")
    p.add_argument("--pair", nargs="+", default=[], metavar="BASELINE:METHOD",
                   help="more paired comparisons, e.g. dapo:pepo_d")
    args = parser.parse_args(argv)
    if args.command == "run":
        from pepo.methods import builtin_methods, get_method

        methods = [m for name in args.methods for m in (builtin_methods() if name == "all" else [name])]
        for name in methods:
            try:
                get_method(name)
            except ValueError as err:
                parser.error(str(err))
            if "/" in name or ":" in name:
                parser.error(f"method {name!r}: a study names its run folders after the method; register it under a "
                             "plain name (entry point `pepo.methods`) to study it.")
        extra = [a for a in args.extra if a != "--"]
        return _run_all(args.out, methods, args.seeds, args.rl_seed_offset, args.jobs, extra)
    pairs = []
    for spec in getattr(args, "pair", []):
        if spec.count(":") != 1 or not all(spec.split(":")):
            parser.error(f"--pair {spec!r}: write BASELINE:METHOD, e.g. dapo:pepo_d")
        pairs.append(tuple(spec.split(":")))
    print(report(args.out, args.baseline, pairs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
