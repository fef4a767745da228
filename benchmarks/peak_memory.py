"""Peak memory of the loss + backward: GRPO vs PEPO (detached) vs PEPO with weights in the autograd graph.

Same model, prompts and sampled completions for all three (generated once, then reused). On a CPU
the peak is the maximum over time of live allocations recorded by torch.profiler (allocations minus
frees, in event order) during ``compute_loss`` + ``backward``, relative to the live bytes at its
start; on CUDA it is ``torch.cuda.max_memory_allocated`` over the same span minus the bytes allocated
at its start.

    python -m benchmarks.peak_memory                                   # the demo's tiny model, CPU
    python -m benchmarks.peak_memory --size 3b --device cuda           # Qwen2.5-VL-3B-sized, bf16, SDPA
"""

from __future__ import annotations

import argparse

import torch

from benchmarks._memory import cuda_peak_bytes
from benchmarks._trainer_setup import add_model_arguments, describe, model_settings, scratch_dir, step_trainer, use_method


def _peak_bytes_cpu(fn) -> int:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # self (not inclusive) usage: a nested op (zeros -> empty) would otherwise count one allocation twice
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start)
    live = peak = 0
    for e in events:
        live += e.self_cpu_memory_usage
        peak = max(peak, live)
    return peak


VARIANTS = {
    "GRPO (PEPO code path off)": ("grpo", {}),
    "PEPO (detached weights)": ("pepo", {"detach_weights": True}),
    "PEPO, weights in the graph": ("pepo", {"detach_weights": False}),
}


def measure(settings: dict, repeats: int = 3) -> tuple[str, dict[str, int], dict[str, int]]:
    """Peak extra bytes of loss + backward per variant (min over ``repeats``), a description line, and the
    batch's shape: completions B, completion length C, sequence length S, hidden states L1 (L + 1), width D."""
    cuda = settings.get("device", "cpu").startswith("cuda")
    peak_bytes = cuda_peak_bytes if cuda else _peak_bytes_cpu
    with scratch_dir() as tmp:
        trainer, _ = step_trainer("pepo", tmp, **settings)
        batch = next(iter(trainer.get_train_dataloader()))
        torch.manual_seed(0)
        inputs = trainer._prepare_inputs(batch)  # one generation shared by all variants

        def loss_and_backward():
            trainer.model.zero_grad(set_to_none=True)
            trainer.compute_loss(trainer.model, inputs).backward()

        results = {}
        capture = trainer._capture
        for name, (method, extra) in VARIANTS.items():
            use_method(trainer, capture, method, **extra)
            loss_and_backward()  # warm-up
            results[name] = min(peak_bytes(loss_and_backward) for _ in range(repeats))
        text = trainer.model.config.get_text_config()
        shape = {"B": inputs["completion_ids"].shape[0], "C": inputs["completion_ids"].shape[1],
                 "S": inputs["prompt_ids"].shape[1] + inputs["completion_ids"].shape[1],
                 "L1": text.num_hidden_layers + 1, "D": text.hidden_size}
        return describe(settings, trainer), results, shape


def main(argv: list[str] | None = None) -> dict[str, int]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    add_model_arguments(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    header, results, _ = measure(model_settings(args), args.repeats)
    base = results["GRPO (PEPO code path off)"]
    print(f"peak extra memory during loss + backward (min of {args.repeats}); {header}")
    for name, peak in results.items():
        print(f"  {name:<28} {peak / 2**20:10.2f} MB  ({100 * (peak - base) / base:+.3f}% vs GRPO)")
    return results


if __name__ == "__main__":
    main()
