"""Peak memory of the loss + backward: GRPO vs PEPO (detached) vs PEPO with weights in the autograd graph.

Same tiny model, prompts and sampled completions for all three (generated once, then reused); the
peak is the maximum over time of live CPU allocations recorded by torch.profiler (allocations minus
frees, in event order) during ``compute_loss`` + ``backward``, relative to the live bytes at its start.

    python -m benchmarks.peak_memory
"""

from __future__ import annotations

import torch

from benchmarks._tiny_setup import scratch_dir, tiny_trainer


def _peak_bytes(fn) -> int:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # self (not inclusive) usage: a nested op (zeros -> empty) would otherwise count one allocation twice
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start)
    live = peak = 0
    for e in events:
        live += e.self_cpu_memory_usage
        peak = max(peak, live)
    return peak


def main() -> None:
    torch.set_num_threads(1)
    with scratch_dir() as tmp:
        trainer, _ = tiny_trainer("pepo", tmp)
        prompts = next(iter(trainer.get_train_dataloader()))
        torch.manual_seed(0)
        inputs = trainer._prepare_inputs(prompts)  # one generation shared by all variants

        def loss_and_backward():
            trainer.model.zero_grad(set_to_none=True)
            trainer.compute_loss(trainer.model, inputs).backward()

        variants = {
            "GRPO (PEPO code path off)": dict(method="grpo", log_token_stats=False),
            "PEPO (detached weights)": dict(method="pepo", detach_weights=True),
            "PEPO, weights in the graph": dict(method="pepo", detach_weights=False),
        }
        results = {}
        capture = trainer._capture
        for name, settings in variants.items():
            for key, value in settings.items():
                setattr(trainer.args, key, value)
            trainer._capture = capture if settings["method"] != "grpo" else None  # GRPO: no hooks at all
            loss_and_backward()  # warm-up
            results[name] = min(_peak_bytes(loss_and_backward) for _ in range(3))
    base = results["GRPO (PEPO code path off)"]
    print(f"peak live CPU memory during loss + backward (min of 3), torch {torch.__version__}")
    for name, peak in results.items():
        print(f"  {name:<28} {peak / 2**20:8.2f} MB  ({100 * (peak - base) / base:+.2f}% vs GRPO)")


if __name__ == "__main__":
    main()
