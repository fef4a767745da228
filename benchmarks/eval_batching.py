"""`pepo eval` throughput with the transformers backend: prompts per generate call, side by side.

Each sample has its own seeded random stream (pepo.eval.generation.SeededRowSampler), so batching
prompts does not change the samples; this measures what it buys. The demo's tiny Qwen2.5-VL
(random weights, so completions run to --max_new_tokens), the synthetic task's first --prompts
prompts, N samples each; batch sizes are interleaved and each is timed --repeats times (median).

    python -m benchmarks.eval_batching [--prompts 32 --num_samples 8 --batch_sizes 1 8 32]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> dict[int, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--num_samples", type=int, default=8)
    parser.add_argument("--max_new_tokens", type=int, default=8)
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    from pepo.data.synthetic import text_corpus
    from pepo.eval.runner import EvalSettings, evaluate_rows
    from pepo.eval.tasks import TASKS, load_task_rows, make_scorer
    from pepo.models.tiny import build_tiny_qwen2_5_vl, train_tiny_tokenizer
    from pepo.sft import answer_completion

    tokenizer = train_tiny_tokenizer(text_corpus() + [answer_completion("3")])
    model, processor = build_tiny_qwen2_5_vl(tokenizer)
    model.to(args.device)
    rows = [dict(r) for r in load_task_rows(TASKS["synthetic"], limit=args.prompts)]
    score = make_scorer(TASKS["synthetic"])
    settings = EvalSettings(num_samples=args.num_samples, max_new_tokens=args.max_new_tokens)
    times: dict[int, list[float]] = {b: [] for b in args.batch_sizes}
    results = {}
    with tempfile.TemporaryDirectory(prefix="pepo-bench-") as tmp:
        for r in range(args.repeats):
            for b in args.batch_sizes:
                start = time.perf_counter()
                results[b] = evaluate_rows(model, processor, rows, score, Path(tmp) / f"{b}-{r}", settings,
                                           show_progress=False, chunk_size=b)
                times[b].append(time.perf_counter() - start)
    same = all(results[b] == results[args.batch_sizes[0]] for b in args.batch_sizes)
    print(f"{args.prompts} prompts x {args.num_samples} samples, <= {args.max_new_tokens} new tokens, tiny Qwen2.5-VL, "
          f"{args.device}, 1 thread, median of {args.repeats}; torch {torch.__version__}")
    print("| prompts per generate | seconds | prompts/s | speed-up vs 1 |\n|---|---|---|---|")
    base = statistics.median(times[args.batch_sizes[0]])
    rates = {}
    for b in args.batch_sizes:
        t = statistics.median(times[b])
        rates[b] = args.prompts / t
        print(f"| {b} | {t:.2f} | {rates[b]:.1f} | {base / t:.2f}x |")
    print(f"identical samples at every batch size: {same}")
    return rates


if __name__ == "__main__":
    main()
