"""``pepo eval``: sample a checkpoint on a benchmark (avg@N, maj@N, pass@N), and ``pepo eval compare``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

__all__ = ["eval_main", "compare_table"]


def compare_table(run_dirs: Sequence[str]) -> str:
    """Markdown table: rows = runs, columns = tasks (avg@N) + average over the tasks each run has."""
    runs: dict[str, dict[str, float]] = {}
    for run in run_dirs:
        summaries = sorted(Path(run).rglob("summary.json"))
        if not summaries:
            raise FileNotFoundError(f"no summary.json under {run}: is it a `pepo eval` output folder?")
        for path in summaries:
            s = json.loads(path.read_text())
            runs.setdefault(Path(run).name, {})[s["task"]] = s["avg"]
    tasks = sorted({t for r in runs.values() for t in r})
    lines = ["| run | " + " | ".join(tasks) + " | average |", "|---|" + "---|" * (len(tasks) + 1)]
    for name, scores in runs.items():
        cells = [f"{scores[t]:.2f}" if t in scores else "-" for t in tasks]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {sum(scores.values()) / len(scores):.2f} |")
    return "\n".join(lines)


def eval_main(argv: Sequence[str]) -> int:
    from pepo.eval.tasks import TASKS

    if argv and argv[0] == "compare":
        parser = argparse.ArgumentParser(prog="pepo eval compare", description="Paper-style table of eval runs.")
        parser.add_argument("runs", nargs="+", help="output folders of `pepo eval` (searched for summary.json)")
        args = parser.parse_args(argv[1:])
        try:
            print(compare_table(args.runs))
        except FileNotFoundError as err:
            print(f"pepo: error: {err}", file=sys.stderr)
            return 2
        return 0
    parser = argparse.ArgumentParser(
        prog="pepo eval",
        description="Sample a checkpoint N times per prompt and score it with the task's rule-based scorer "
        "(transformers backend, seeded per prompt). Results are written as they go; rerunning the same command "
        "resumes. Also: `pepo eval compare RUN...`.",
    )
    parser.add_argument("--model", required=True, help="checkpoint directory or hub id (e.g. runs/demo/checkpoint)")
    parser.add_argument("--task", required=True, choices=sorted(TASKS), help="benchmark")
    parser.add_argument("--dataset", help="override the task's dataset (local path or hub id of the same schema)")
    parser.add_argument("--split", help="override the task's split")
    parser.add_argument("--image_root", help="folder that relative image paths resolve against")
    parser.add_argument("--limit", type=int, help="evaluate only the first K prompts")
    parser.add_argument("--all_items", action="store_true",
                        help="keep every item (MathVerse: add free-form; LogicVista: add multi-letter answers)")
    parser.add_argument("--num_samples", type=int, default=8, help="N of avg@N / maj@N / pass@N (paper: 8)")
    parser.add_argument("--temperature", type=float, default=1.0, help="paper: 1.0 (0 = greedy, then use N = 1)")
    parser.add_argument("--top_p", type=float, default=1.0)
    parser.add_argument("--max_new_tokens", type=int, help="default: the task's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_dir", help="default: runs/eval/<model name>/<task>")
    args = parser.parse_args(argv)

    from pepo.data.loading import DataError
    from pepo.eval.runner import EvalSettings, evaluate_rows, summarize
    from pepo.eval.tasks import load_task_rows, make_scorer
    from pepo.models.loading import load_model_and_processor

    task = TASKS[args.task]
    out = Path(args.output_dir or Path("runs/eval") / Path(args.model.rstrip("/")).parent.name / args.task)
    try:
        rows = load_task_rows(task, args.dataset, args.split, args.image_root, args.limit, all_items=args.all_items)
    except (DataError, ValueError) as err:
        print(f"pepo: error: {err}", file=sys.stderr)
        return 2
    try:
        model, processor = load_model_and_processor(args.model)
    except (OSError, ValueError) as err:
        print(f"pepo: error: checkpoint {args.model!r} could not be loaded: {err}", file=sys.stderr)
        return 2
    settings = EvalSettings(args.num_samples, args.temperature, args.top_p,
                            args.max_new_tokens or task.max_new_tokens, args.seed)
    samples = evaluate_rows(model, processor, [dict(r) for r in rows], make_scorer(task), out, settings)
    summary = {"task": args.task, "model": args.model, "backend": "transformers", "protocol": task.protocol,
               "num_samples": settings.num_samples, "temperature": settings.temperature, "top_p": settings.top_p,
               "max_new_tokens": settings.max_new_tokens, "seed": settings.seed, **summarize(samples)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    n = settings.num_samples
    table = (f"| task | prompts | avg@{n} | maj@{n} | pass@{n} |\n|---|---|---|---|---|\n"
             f"| {args.task} | {summary['prompts']} | {summary['avg']:.2f} | {summary['maj']:.2f} | {summary['pass']:.2f} |")
    (out / "summary.md").write_text(f"{table}\n\nProtocol: {task.protocol}; backend transformers, T={settings.temperature}, "
                                    f"top-p={settings.top_p}, seed {settings.seed}.\n")
    print(table)
    print(f"\nresults: {out}")
    return 0
