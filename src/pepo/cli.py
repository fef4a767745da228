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
  --resume_from_checkpoint auto|PATH
                    continue a killed or Ctrl-C'd run from the newest complete checkpoint-N in
                    --output_dir (auto; none found: start fresh) or from PATH; the warm start and
                    the first scoring are reused, not redone. Ctrl-C during training saves a
                    checkpoint at the end of the step and prints the command that resumes.

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
    from pepo.callbacks_token_views import TokenViewArguments
    from pepo.methods.clip_cov import ClipCovArguments
    from pepo.methods.vgpo import VGPOArguments
    from pepo.perception_trainer import PerceptionArguments
    from pepo.vllm_colocate import VLLMEngineArguments

    groups = (("data / model / warm start", dataclasses.fields(ScriptArguments)), ("PEPO", pepo_fields),
              ("PAPO / VPPO (methods papo_g, papo_d, vppo; None = the method's default)",
               dataclasses.fields(PerceptionArguments)),
              ("VGPO (method vgpo)", dataclasses.fields(VGPOArguments)),
              ("Clip-Cov (method clip_cov)", dataclasses.fields(ClipCovArguments)),
              ("token views (pepo watch RUN_DIR, <output_dir>/token_views/index.html)",
               dataclasses.fields(TokenViewArguments)),
              ("vLLM colocate engine (with --use_vllm true --vllm_mode colocate; TRL's vllm_* options apply too)",
               dataclasses.fields(VLLMEngineArguments)))
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


def _train(argv: Sequence[str], base_demo: bool, command: str = "train") -> int:
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
    except KeyboardInterrupt:  # outside RL training (set-up, warm start, scoring) or a second Ctrl-C
        print("\npepo: interrupted before a checkpoint could be saved; `--resume_from_checkpoint auto` continues "
              "from the newest complete checkpoint, if any.", file=sys.stderr)
        return 130
    if result.interrupted:
        from pepo.resume import resume_command

        print(f"\nstopped at step {result.checkpoint.name.split('-')[-1]}, checkpoint saved to {result.checkpoint}; "
              f"resume with: {resume_command(command if argv or command != 'train' else 'demo', argv)}")
        return 130
    if result.after is not None:
        print("\nheld-out accuracy (greedy), before -> after RL:")
        for key in result.before:
            if key != "n":
                print(f"  {key:<16} {result.before[key]:.3f} -> {result.after[key]:.3f}")
    print(f"\nrun folder: {result.output_dir}")
    return 0


def _analyze(argv: Sequence[str]) -> int:
    from pepo.eval.cli import add_data_arguments

    parser = argparse.ArgumentParser(
        prog="pepo analyze", description="Look inside a model or a run: token heatmaps, the paper's token-level "
        "analyses (`tokens`), training curves (`dynamics`).")
    sub = parser.add_subparsers(dest="what", required=True)
    dyn = sub.add_parser("dynamics", help="reward, response length, mean visual similarity and entropy per step, "
                         "several runs overlaid (PNG + JSON)")
    dyn.add_argument("runs", nargs="+", help="run folders (each with metrics.jsonl)")
    dyn.add_argument("--out", default="runs/analysis", help="output folder (default: runs/analysis)")
    dyn.add_argument("--title", default="", help="figure title (default: the run names)")
    tok = sub.add_parser(
        "tokens", help="sample responses from a checkpoint and write token heatmaps (HTML + PNG), similarity "
        "distributions of correct vs incorrect responses, hidden-state shift without the image, top words by "
        "similarity and entropy, and an index.md",
        description="Sample responses from a checkpoint on a task, score every token (visual similarity, entropy, "
        "PEPO weight, hidden-state shift without the image) and write the paper's token-level figures. "
        "Example: pepo analyze tokens --model runs/demo/checkpoint --task synthetic --limit 200")
    tok.add_argument("--model", required=True, help="checkpoint directory or hub id (e.g. runs/demo/checkpoint)")
    tok.add_argument("--task", default="synthetic", help="an eval task name (see `pepo eval --help`); default synthetic")
    add_data_arguments(tok)
    tok.add_argument("--limit", type=int, default=200, help="number of prompts (default 200)")
    tok.add_argument("--num_samples", type=int, default=1, help="responses per prompt (default 1)")
    tok.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (0 = greedy); entropies "
                     "are computed at this temperature, as in training")
    tok.add_argument("--top_p", type=float, default=1.0)
    tok.add_argument("--max_new_tokens", type=int, help="default: the task's")
    tok.add_argument("--batch_size", type=int, default=8, help="prompts per forward (memory is bounded by one batch)")
    tok.add_argument("--shift", choices=["blank", "remove", "none"], default="blank",
                     help="counterfactual for the hidden-state shift: blank the image (mean colour, same size), remove "
                     "it from the prompt, or skip (default blank)")
    tok.add_argument("--score_type", help="similarity: cosine | dot | l2 | l1 (default: the run's config.yaml next "
                     "to the checkpoint, else cosine)")
    tok.add_argument("--gate_alpha", type=float, help="default: the run's config.yaml, else 0.05")
    tok.add_argument("--gate_temperature", type=float, help="default: the run's config.yaml, else 1.8")
    tok.add_argument("--top_k", type=int, default=10, help="K of the top-K / bottom-K similarity statistics")
    tok.add_argument("--heatmap_pngs", type=int, default=4, help="responses that also get a PNG heatmap")
    tok.add_argument("--seed", type=int, default=0)
    tok.add_argument("--out", help="output folder (default: runs/analysis/<model>/<task>)")
    args = parser.parse_args(argv)
    if args.what == "dynamics":
        from pepo.analysis.dynamics import plot_dynamics

        try:
            png = plot_dynamics(args.runs, args.out, args.title)
        except FileNotFoundError as err:
            print(f"pepo: error: {err}", file=sys.stderr)
            return 2
        print(f"wrote {png} and {png.with_suffix('.json')}")
        return 0
    return _analyze_tokens(args)


def _run_config_defaults(model: str) -> dict:
    """PEPO settings of the run a checkpoint came from (``<run>/config.yaml`` next to ``<run>/checkpoint``)."""
    from pathlib import Path

    import yaml

    for candidate in (Path(model) / "config.yaml", Path(model).parent / "config.yaml"):
        if candidate.is_file():
            config = yaml.safe_load(candidate.read_text()) or {}
            return {"score_type": config.get("vision_score_type"), "gate_alpha": config.get("gate_alpha"),
                    "gate_temperature": config.get("gate_temperature")}
    return {}


def _analyze_tokens(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pepo.analysis.token_report import analyze_tokens
    from pepo.analysis.tokens import TokenAnalysisSettings
    from pepo.data.loading import DataError
    from pepo.eval.cli import task_from_args
    from pepo.data.loading import write_data_record
    from pepo.eval.tasks import load_task_data, make_scorer
    from pepo.models.loading import image_token_id, load_model_and_processor

    try:
        task = task_from_args(args)
    except ValueError as err:
        print(f"pepo: error: {err}", file=sys.stderr)
        return 2
    defaults = {"score_type": "cosine", "gate_alpha": 0.05, "gate_temperature": 1.8}
    from_run = {k: v for k, v in _run_config_defaults(args.model).items() if v is not None}
    chosen = {k: getattr(args, k) if getattr(args, k) is not None else from_run.get(k, defaults[k]) for k in defaults}
    try:
        settings = TokenAnalysisSettings(
            temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens or task.max_new_tokens,
            num_samples=args.num_samples, batch_size=args.batch_size, shift=args.shift, seed=args.seed, **chosen)
        rows, loaded = load_task_data(task, args.dataset, args.split, args.image_root, args.limit,
                                      source_format=args.source_format, class_names=args.class_names,
                                      box_format=args.box_format)
    except (DataError, ValueError) as err:
        print(f"pepo: error: {err}", file=sys.stderr)
        return 2
    try:
        model, processor = load_model_and_processor(args.model)
    except (OSError, ValueError) as err:
        print(f"pepo: error: checkpoint {args.model!r} could not be loaded: {err}", file=sys.stderr)
        return 2
    try:  # every prompt with its image tokens fits the model's context, or stop now naming the row
        from pepo.data.prompt_length import check_eval_prompts

        print(check_eval_prompts(rows, processor, model, args.model, settings.max_new_tokens))
    except ValueError as err:
        print(f"pepo: error: {err}", file=sys.stderr)
        return 2
    name = Path(args.model.rstrip("/"))
    name = name.parent.name if name.name == "checkpoint" else name.name
    out = Path(args.out or Path("runs/analysis") / name / args.task)
    meta = {"model": args.model, "task": args.task, "dataset": args.dataset or task.dataset,
            "split": args.split or task.split, "source_format": loaded.source_format, "prompts": len(rows)}
    write_data_record(out, loaded)
    summary = analyze_tokens(model, processor, rows, make_scorer(task), out, settings, meta,
                             image_token_id(model, processor), heatmap_pngs=args.heatmap_pngs, top_k=args.top_k)
    print(f"{summary['responses']} responses, mean reward {summary['mean_reward']:.3f}")
    print(f"results: {out / 'index.md'} (heatmaps: {out / 'heatmaps' / 'index.html'})")
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
    sub.add_parser("analyze", help="look inside: `pepo analyze tokens --model CKPT [--task T]` (token heatmaps, "
                   "Figures 2-3), `pepo analyze dynamics RUN...` (training curves, Figure 6)", add_help=False)
    sub.add_parser("eval", help="evaluate a checkpoint: avg@N / maj@N / pass@N, resumable; `pepo eval compare RUN...`",
                   add_help=False)
    sub.add_parser("watch", help="summarise a run folder, live or done: `pepo watch RUN_DIR [--follow]` (reward, "
                   "PEPO weights, top-weighted tokens, the token-view page)", add_help=False)
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
        return _train(rest, base_demo=True, command="demo")
    if command == "train":
        return _train(rest, base_demo=False, command="train")
    if command == "analyze":
        return _analyze(rest)
    if command == "eval":
        from pepo.eval.cli import eval_main

        return eval_main(rest)
    if command == "watch":
        from pepo.watch import watch_main

        return watch_main(rest)
    parser.print_help(sys.stderr)
    print(f"\npepo: error: unknown command {command!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
