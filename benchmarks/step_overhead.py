"""Training-step overhead of PEPO over GRPO, measured side by side on the same weights.

One trainer, one model, the same prompts and sampling seed; the method is switched in place and
GRPO / PEPO steps alternate after a warm-up so machine noise hits both. Prints step times, the
overhead ratio (t_pepo - t_grpo) / t_grpo, and the time PEPO itself reports for its hooks + weights
(pepo/overhead_ms) as a share of the step. On a GPU that figure is host time (kernel launches are
asynchronous), so there the step-time difference is the number to read.

    python -m benchmarks.step_overhead [--steps 10]                          # the demo's tiny model, CPU
    python -m benchmarks.step_overhead --size 3b --device cuda --steps 10    # Qwen2.5-VL-3B-sized, bf16, SDPA
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks._trainer_setup import add_model_arguments, describe, model_settings, scratch_dir, step_trainer, use_method


def measure(steps: int, settings: dict) -> dict:
    """Median step times of GRPO and PEPO (interleaved) and PEPO's own reported time, in seconds."""
    with scratch_dir() as tmp:
        trainer, step = step_trainer("pepo", tmp, **settings)
        capture = trainer._capture
        for method in ("grpo", "pepo"):
            use_method(trainer, capture, method)
            step()  # warm-up (allocator, kernels) for each code path
        times: dict[str, list[float]] = {"grpo": [], "pepo": []}
        own = []
        logged = trainer._metrics["train"]["pepo/overhead_ms"]
        for _ in range(steps):
            for method in ("grpo", "pepo"):
                use_method(trainer, capture, method)
                start = time.perf_counter()
                step()
                times[method].append(time.perf_counter() - start)
            own.append(logged[-1])  # the PEPO step's own hooks + weights time (host clock)
        header = describe(settings, trainer)
    t_grpo, t_pepo = statistics.median(times["grpo"]), statistics.median(times["pepo"])
    return {"header": header, "grpo": t_grpo, "pepo": t_pepo, "spread": statistics.pstdev(times["grpo"]) / t_grpo,
            "own": statistics.median(own) / 1000 if own else float("nan"), "steps": steps}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    add_model_arguments(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    r = measure(args.steps, model_settings(args))
    print(f"median of {r['steps']} interleaved steps; {r['header']}")
    print(f"  GRPO step {1000 * r['grpo']:.1f} ms (run-to-run spread {100 * r['spread']:.1f}%)")
    print(f"  PEPO step {1000 * r['pepo']:.1f} ms")
    print(f"  overhead (t_pepo - t_grpo) / t_grpo = {100 * (r['pepo'] - r['grpo']) / r['grpo']:+.2f}%")
    print(f"  PEPO's own time (hooks + weights): {1000 * r['own']:.2f} ms = {100 * r['own'] / r['pepo']:.3f}% of the step")
    return r


if __name__ == "__main__":
    main()
