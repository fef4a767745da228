"""``pepo`` command line: ``pepo demo``, ``pepo train [--config R] [--key value ...]``."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

__all__ = ["main"]

_TRAIN_HELP = """\
usage: pepo train [--config RECIPE.yaml] [--key value ...]

Train a VLM with PEPO (or a baseline) on TRL's GRPOTrainer. With no arguments it runs the
embedded demo (tiny Qwen2.5-VL built in code, procedurally drawn shape questions, no download).

  --config FILE     flat YAML recipe of the options below; command-line flags override it
  --dry_run true    validate config, data, model and processor, score the test split, stop

Examples:
  pepo train                                        # = pepo demo
  pepo train --config recipes/demo.yaml --method grpo --output_dir runs/grpo
  pepo train --model_name_or_path Qwen/Qwen2.5-VL-3B-Instruct --dataset data/train.jsonl \\
             --reward_funcs exact_match --warm_start false --bf16 true

Options (ScriptArguments, then PEPOConfig = TRL GRPOConfig + PEPO):
"""


def _train_help() -> str:
    import dataclasses

    from pepo.config import ScriptArguments
    from pepo.trainer import PEPOConfig

    lines = [_TRAIN_HELP]
    pepo_fields = [f for f in dataclasses.fields(PEPOConfig) if f.name in PEPOConfig.__annotations__]
    groups = (("data / model / warm start", dataclasses.fields(ScriptArguments)), ("PEPO", pepo_fields))
    for title, fields in groups:
        lines.append(f"\n{title}:")
        for f in fields:
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
            lines.append(f"  --{f.name} (default: {default})\n      {f.metadata.get('help', '')}")
    lines.append(
        "\nEvery TRL GRPOConfig / TrainingArguments field is accepted too (learning_rate, max_steps, "
        "num_generations, per_device_train_batch_size, beta, loss_type, epsilon, epsilon_high, "
        "gradient_checkpointing, bf16, report_to, output_dir, ...): see TRL's GRPOConfig documentation."
    )
    return "\n".join(lines)


def _train(argv: Sequence[str], base_demo: bool) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(_train_help())
        return 0
    from pepo.config import ConfigError, load_yaml, demo_recipe_path, parse_train_args
    from pepo.data.loading import DataError

    base = load_yaml(demo_recipe_path()) if base_demo or not argv else None
    try:
        script_args, training_args = parse_train_args(argv, base=base)
        from pepo.run import run_training

        result = run_training(script_args, training_args)
    except (ConfigError, DataError) as err:
        print(f"pepo: error: {err}", file=sys.stderr)
        return 2
    if result.after is not None:
        print("\nheld-out accuracy (greedy), before -> after RL:")
        for key in result.before:
            if key != "n":
                print(f"  {key:<16} {result.before[key]:.3f} -> {result.after[key]:.3f}")
    print(f"\nrun folder: {result.output_dir}")
    return 0


def _analyze(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="pepo analyze", description="Analyses of training runs.")
    sub = parser.add_subparsers(dest="what", required=True)
    dyn = sub.add_parser("dynamics", help="reward, response length, mean visual similarity and entropy per step, "
                         "several runs overlaid (PNG + JSON)")
    dyn.add_argument("runs", nargs="+", help="run folders (each with metrics.jsonl)")
    dyn.add_argument("--out", default="runs/analysis", help="output folder (default: runs/analysis)")
    dyn.add_argument("--title", default="", help="figure title (default: the run names)")
    args = parser.parse_args(argv)
    from pepo.analysis.dynamics import plot_dynamics

    try:
        png = plot_dynamics(args.runs, args.out, args.title)
    except FileNotFoundError as err:
        print(f"pepo: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {png} and {png.with_suffix('.json')}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="pepo",
        description="PEPO: token-level RL (Perception-Exploration Policy Optimization) for vision-language models.",
        epilog="Run `pepo <command> --help` for a command's options.",
    )
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    sub.add_parser("demo", help="train the embedded tiny VLM with PEPO on CPU (no downloads, a few minutes)",
                   add_help=False)
    sub.add_parser("train", help="train with a recipe: pepo train --config R.yaml [--key value ...]", add_help=False)
    sub.add_parser("analyze", help="look inside runs: `pepo analyze dynamics RUN... [--out DIR]` (training curves "
                   "overlaid, the paper's Figure 6)", add_help=False)
    sub.add_parser("eval", help="evaluate a checkpoint: avg@N / maj@N / pass@N, resumable; `pepo eval compare RUN...`",
                   add_help=False)
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    command, rest = argv[0], argv[1:]
    if command == "demo":
        if any(a in ("-h", "--help") for a in rest):
            print("usage: pepo demo [--key value ...]\n\nRuns the embedded recipe (src/pepo/demo.yaml): builds a "
                  "tiny Qwen2.5-VL and a tokenizer in code, draws a shape-counting dataset, warm-starts the model, "
                  "scores the test split, trains with PEPO, scores again and writes runs/demo/. Any `pepo train` "
                  "option overrides the recipe, e.g. `pepo demo --method grpo --seed 1 --output_dir runs/grpo1`.")
            return 0
        return _train(rest, base_demo=True)
    if command == "train":
        return _train(rest, base_demo=False)
    if command == "analyze":
        return _analyze(rest)
    if command == "eval":
        from pepo.eval.cli import eval_main

        return eval_main(rest)
    parser.print_help(sys.stderr)
    print(f"\npepo: error: unknown command {command!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
