"""Training-step overhead of PEPO over GRPO on the demo's tiny model, measured side by side.

Same model, data, prompts and sampling seed; the methods alternate step by step after a warm-up so
machine noise hits both. Prints step times, the overhead ratio (t_pepo - t_grpo) / t_grpo, and the
time PEPO itself reports for its hooks + weights (pepo/overhead_ms) as a share of the step.

    python -m benchmarks.step_overhead [--steps 10]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks._tiny_setup import scratch_dir, tiny_trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with scratch_dir() as a, scratch_dir() as b:
        runs = {
            "grpo": tiny_trainer("grpo", a, log_token_stats=False),  # TRL's GRPO, PEPO code path off
            "pepo": tiny_trainer("pepo", b),
        }
        for _, step in runs.values():
            step()  # warm-up
        times = {name: [] for name in runs}
        for _ in range(args.steps):
            for name, (_, step) in runs.items():
                start = time.perf_counter()
                step()
                times[name].append(time.perf_counter() - start)
        own = runs["pepo"][0]._metrics["train"]["pepo/overhead_ms"][1:]
    t_grpo, t_pepo = statistics.median(times["grpo"]), statistics.median(times["pepo"])
    spread = statistics.pstdev(times["grpo"]) / t_grpo
    print(f"median of {args.steps} interleaved steps, 1 torch thread, torch {torch.__version__}")
    print(f"  GRPO step {1000 * t_grpo:.1f} ms (run-to-run spread {100 * spread:.1f}%)")
    print(f"  PEPO step {1000 * t_pepo:.1f} ms")
    print(f"  overhead (t_pepo - t_grpo) / t_grpo = {100 * (t_pepo - t_grpo) / t_grpo:+.2f}%")
    print(f"  PEPO's own time (hooks + weights): {statistics.median(own):.2f} ms = "
          f"{100 * statistics.median(own) / 1000 / t_pepo:.2f}% of the step")


if __name__ == "__main__":
    main()
