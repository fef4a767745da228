"""Step time and peak memory of PEPO, PAPO, VPPO, VGPO and Clip-Cov against GRPO, side by side in one run.

One trainer, one model, the same prompts and sampling seed; the method is switched in place and the
methods' steps alternate after a warm-up, so machine noise hits all of them. Every method runs on
GRPO's loss (loss_type grpo, beta 0, no dynamic sampling), so the differences are each method's
own work: PEPO's hooks and weights; PAPO's and VPPO's extra masked-image forward, masking (PAPO
re-runs the image processor on the masked raw images) and loss terms; VGPO's last-layer hook and factors
(its own score type, cosine to the mean image vector); Clip-Cov's covariance and draw. DAPO, PEPO_G and
PEPO_D do per-token what GRPO and PEPO do (they differ in loss shape and sampling, not measured here).

* step time: median over ``--steps`` of generate + loss + backward (as ``benchmarks.step_overhead``);
* peak memory: peak extra bytes during loss + backward (which contains the masked forward) on one
  shared generation, as ``benchmarks.peak_memory`` measures it (CPU: profiler, CUDA: allocator);
* loss + backward: median over ``--steps`` of the training pass alone on that shared generation
  (a tiny model's step is mostly generation; this is where the extra forward shows);
* masked forward: the time the trainer itself logs for it (``papo|vppo/masked_forward_ms``).

    python -m benchmarks.method_overhead [--steps 10]                       # the demo's tiny model, CPU
    python -m benchmarks.method_overhead --size 3b --device cuda --steps 5  # Qwen2.5-VL-3B-sized, bf16
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from benchmarks._memory import cuda_peak_bytes
from benchmarks._trainer_setup import add_model_arguments, describe, model_settings, scratch_dir, step_trainer, use_method
from benchmarks.peak_memory import _peak_bytes_cpu
from pepo.perception_trainer import PERCEPTION_DEFAULTS

METHODS = ("grpo", "pepo", "papo_g", "papo_d", "vppo", "vgpo", "clip_cov")
#: VGPO's hidden-state score (its preset's): cosine of the last layer to the mean image vector
_VGPO_SCORES = {"vision_score_type": "cosine_to_mean", "vision_layers": [-1]}


def _switch(trainer, captures: dict, method: str) -> None:
    """In-place method switch; PAPO / VPPO get their public defaults, PEPO / VGPO their hooks, the others none.

    ``captures``: method -> (its :class:`~pepo.hooks.VisualScoreCapture`, its score settings); hooks fire
    only while a capture records, so one capture per method adds nothing to the others.
    """
    capture, scores = captures.get(method, (None, {}))
    use_method(trainer, capture, method, **PERCEPTION_DEFAULTS.get(method, {}), **scores)
    if capture is None:
        trainer.args.log_token_stats = False
        trainer._capture = None


def _masked_forward_ms(trainer, method: str) -> float | None:
    if method not in PERCEPTION_DEFAULTS:
        return None
    key = ("vppo" if method == "vppo" else "papo") + "/masked_forward_ms"
    return trainer._metrics["train"][key][-1]


def measure(steps: int, settings: dict, repeats: int = 1) -> dict:
    """Per method: median step seconds, peak extra bytes of loss + backward, median masked-forward ms."""
    cuda = settings.get("device", "cpu").startswith("cuda")
    peak_bytes = cuda_peak_bytes if cuda else _peak_bytes_cpu
    with scratch_dir() as tmp:
        # initialised as PAPO_G so the shared generation below carries raw images and mask seeds
        trainer, step = step_trainer("papo_g", tmp, loss_type="grpo", beta=0.0, **settings)
        from pepo.hooks import VisualScoreCapture

        pepo_scores = {"vision_score_type": trainer.args.vision_score_type,
                       "vision_layers": trainer.args.vision_layers}
        captures = {m: (VisualScoreCapture(trainer.model, s["vision_score_type"], s["vision_layers"]), s)
                    for m, s in (("pepo", pepo_scores), ("vgpo", _VGPO_SCORES))}
        for method in METHODS:
            _switch(trainer, captures, method)
            step()  # warm-up of each code path
        times: dict[str, list[float]] = {m: [] for m in METHODS}
        masked_ms: dict[str, list[float]] = {m: [] for m in METHODS}
        for _ in range(steps):
            for method in METHODS:
                _switch(trainer, captures, method)
                start = time.perf_counter()
                step()
                times[method].append(time.perf_counter() - start)
                ms = _masked_forward_ms(trainer, method)
                if ms is not None:
                    masked_ms[method].append(ms)

        _switch(trainer, captures, "papo_g")
        batch = next(iter(trainer.get_train_dataloader()))
        trainer._buffered_inputs = None
        torch.manual_seed(0)
        inputs = trainer._prepare_inputs(batch)

        def loss_and_backward():
            trainer.model.zero_grad(set_to_none=True)
            trainer.compute_loss(trainer.model, inputs).backward()

        peaks = {}
        for method in METHODS:
            _switch(trainer, captures, method)
            loss_and_backward()
            peaks[method] = min(peak_bytes(loss_and_backward) for _ in range(repeats))
        # The training pass alone (no generation, which dominates a tiny model's step), interleaved too.
        train_times: dict[str, list[float]] = {m: [] for m in METHODS}
        for _ in range(steps):
            for method in METHODS:
                _switch(trainer, captures, method)
                start = time.perf_counter()
                loss_and_backward()
                if cuda:
                    torch.cuda.synchronize()
                train_times[method].append(time.perf_counter() - start)
        header = describe(settings, trainer)
    return {
        "header": header, "steps": steps,
        "load": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "methods": {m: {"step_s": statistics.median(times[m]), "train_s": statistics.median(train_times[m]),
                        "peak_bytes": peaks[m],
                        "masked_forward_ms": statistics.median(masked_ms[m]) if masked_ms[m] else None}
                    for m in METHODS},
    }


def table(result: dict) -> str:
    """Markdown table of :func:`measure`'s result, ratios relative to GRPO."""
    base = result["methods"]["grpo"]
    lines = ["| method | step (ms) | vs GRPO | loss + backward (ms) | vs GRPO | peak loss+backward (MB) | vs GRPO "
             "| masked forward (ms) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for method, r in result["methods"].items():
        masked = "-" if r["masked_forward_ms"] is None else f"{r['masked_forward_ms']:.1f}"
        lines.append(f"| {method} | {1000 * r['step_s']:.1f} | {r['step_s'] / base['step_s']:.3f}x | "
                     f"{1000 * r['train_s']:.1f} | {r['train_s'] / base['train_s']:.3f}x | "
                     f"{r['peak_bytes'] / 2**20:.2f} | {r['peak_bytes'] / base['peak_bytes']:.3f}x | {masked} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3, help="peak memory: minimum over this many repeats")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    add_model_arguments(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = measure(args.steps, model_settings(args), args.repeats)
    load = "" if result["load"] is None else f", 1-minute load average {result['load']:.1f} at the end"
    print(f"median of {result['steps']} interleaved steps, {args.threads} torch thread(s){load}; {result['header']}")
    print(table(result))
    return result


if __name__ == "__main__":
    main()
