"""Every GPU number the project reports, from one run of one script, into one folder (issue 21).

Sections, in order, each written to ``<out>/results.json`` and ``<out>/summary.md`` as soon as it
ends (a run stopped half-way keeps what it measured):

1. ``header``: GPU (name, memory, multiprocessors, capability, driver), CUDA, Python and package
   versions, dtype, attention, shapes, the command line.
2. ``kernel``: PEPO's similarity kernel (``pepo.weights.visual_similarity``) against the release's
   formulation (:func:`benchmarks.similarity_kernel.release_formulation`) at 3B shapes: L = 37
   hidden states (36 layers + the embedding output), D 2048, V 1,024 / 2,048 / 4,096 image tokens,
   C 1,024 completion tokens, B 8 rows; bfloat16 and float32 (target: >= 10x).
3. ``steps_gc_off`` / ``steps_gc_on``: one Qwen2.5-VL-3B-shaped trainer built from the config
   (random weights, bf16, SDPA) per gradient-checkpointing setting; the method is switched in place
   and the methods' steps are interleaved (order reversed every other round): full steps (generate +
   loss + backward), then the training pass alone (loss + backward) on one shared generation, then
   peak memory of the training pass (``torch.cuda.max_memory_allocated``). With checkpointing off:
   GRPO, PEPO, PAPO_G, PAPO_D and VPPO (all on GRPO's loss, beta 0, so differences are each method's
   own work); on: GRPO and PEPO. Targets: PEPO's step <= GRPO's + 0.1%, peak <= GRPO's + 0.5%.
4. ``sync_check`` (checkpointing off): PEPO's hooks and its weighting + token statistics run under
   ``torch.cuda.set_sync_debug_mode("error")`` (any host sync raises; on a CPU the syncs are counted
   by :mod:`benchmarks._syncs` instead), and the syncs of a whole training pass are counted for GRPO
   and PEPO (``"warn"`` mode's warnings; PEPO may add one: the image span).

Each section has a share of ``--minutes`` (default 7.5, for the issue's < 8 min on one H200):
warm-ups and a minimum number of rounds always run, further rounds only while the share lasts, and
the checkpointing-on trainer is skipped (and says so) when the time left cannot hold it.

    python -m benchmarks.gpu_suite --out runs/gpu_suite                 # on a GPU (see docs/performance.md)
    python -m benchmarks.gpu_suite --device cpu --tiny --out /tmp/gs    # the CPU path, tested by the suite
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import torch

from benchmarks._memory import cuda_peak_bytes
from benchmarks._syncs import count_host_syncs, cuda_sync_errors
from benchmarks._trainer_setup import scratch_dir, step_trainer, use_method
from benchmarks.similarity_kernel import bench

ALL_METHODS = ("grpo", "pepo", "papo_g", "papo_d", "vppo")
GC_ON_METHODS = ("grpo", "pepo")
PACKAGES = ("torch", "transformers", "trl", "accelerate", "datasets", "peft", "tokenizers", "math-verify", "numpy")
#: budget shares (fractions of --minutes at which a phase stops starting new rounds)
SHARES = {"kernel": 0.12, "gc_off_steps": 0.30, "gc_off_train": 0.44, "gc_off_end": 0.60,
          "gc_on_steps": 0.76, "gc_on_train": 0.88}


# --------------------------------------------------------------------------------------------
# Book-keeping
# --------------------------------------------------------------------------------------------


class Clock:
    """Seconds since the suite started and the deadlines of its shares."""

    def __init__(self, minutes: float):
        self.start = time.perf_counter()
        self.total = 60.0 * minutes
        self.shares = dict(SHARES)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self, share: str | float) -> float:
        """Seconds until the share's deadline (negative once past it)."""
        fraction = self.shares[share] if isinstance(share, str) else share
        return fraction * self.total - self.elapsed()


class Report:
    """results.json + summary.md in one folder, rewritten after every measurement."""

    def __init__(self, out: Path):
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.results: dict = {}

    def save(self, section: str, data: dict) -> None:
        self.results[section] = data
        (self.out / "results.json").write_text(json.dumps(self.results, indent=2, default=str) + "\n")
        (self.out / "summary.md").write_text(summary(self.results))


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _free(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def header(args: argparse.Namespace) -> dict:
    """What ran where: machine, versions, dtype, shapes, the command."""
    info = {
        "command": " ".join([sys.executable, "-m", "benchmarks.gpu_suite", *sys.argv[1:]]),
        "started_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "python": platform.python_version(),
        "versions": {name: _version(name) for name in PACKAGES},
        "torch_build": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "device": args.device, "dtype": args.dtype, "attention": args.attn, "minutes_budget": args.minutes,
        "kernel_shapes": {"B": args.kernel_B, "L": args.kernel_L, "V": args.kernel_V, "C": args.kernel_C,
                          "D": args.kernel_D, "dtypes": args.kernel_dtypes, "repeats": args.kernel_repeats},
        "batch": {"size": "tiny" if args.tiny else "3b", "prompts": args.prompts, "generations": args.generations,
                  "completion_length": args.completion_length, "image_size": args.image_size,
                  "layers_override": args.layers, "vision_depth_override": args.vision_depth},
    }
    if args.device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        info["gpu"] = {"name": props.name, "memory_GiB": round(props.total_memory / 2**30, 1),
                       "multiprocessors": props.multi_processor_count, "capability": f"{props.major}.{props.minor}"}
        try:
            info["gpu"]["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            info["gpu"]["driver"] = None
    return info


# --------------------------------------------------------------------------------------------
# 2. Similarity kernel
# --------------------------------------------------------------------------------------------


def kernel_section(args: argparse.Namespace, clock: Clock, report: Report) -> None:
    rows, skipped = [], []
    for dtype in args.kernel_dtypes:
        for V in args.kernel_V:
            shape = (args.kernel_B, args.kernel_L, V, args.kernel_C, args.kernel_D)
            if rows and clock.left("kernel") < 0:
                skipped.append({"dtype": dtype, "V": V})
                continue
            r = bench(*shape, args.device, getattr(torch, dtype), repeats=args.kernel_repeats)
            rows.append({"dtype": dtype, **r})
            _free(args.device)
            report.save("kernel", {"rows": rows, "skipped_for_time": skipped, "target_speedup": 10.0})
    report.save("kernel", {"rows": rows, "skipped_for_time": skipped, "target_speedup": 10.0,
                           "seconds_at_end": clock.elapsed()})


# --------------------------------------------------------------------------------------------
# 3. Steps, training passes, peak memory; 4. syncs
# --------------------------------------------------------------------------------------------


def _switch(trainer, capture, method: str, **extra) -> None:
    """In-place method switch (as benchmarks.method_overhead): PAPO / VPPO get their public defaults."""
    from pepo.perception_trainer import PERCEPTION_DEFAULTS

    use_method(trainer, capture, method, **PERCEPTION_DEFAULTS.get(method, {}), **extra)
    if method != "pepo":
        trainer.args.log_token_stats = False
        trainer._capture = None


def _interleaved(methods, run: Callable[[str], float], share: str, clock: Clock, min_rounds: int,
                 max_rounds: int) -> dict[str, list[float]]:
    """Rounds over every method (order reversed on odd rounds) while the share lasts; seconds per call."""
    times: dict[str, list[float]] = {m: [] for m in methods}
    rounds = 0
    while rounds < max_rounds and (rounds < min_rounds or clock.left(share) > 0):
        order = methods if rounds % 2 == 0 else tuple(reversed(methods))
        for method in order:
            times[method].append(run(method))
        rounds += 1
    return times


@contextmanager
def _no_sync_allowed(cuda: bool, counts: Counter) -> Iterator[None]:
    """CUDA: any host sync inside raises. CPU: syncs inside are added to ``counts``."""
    if cuda:
        with cuda_sync_errors():
            yield
    else:
        with count_host_syncs() as inner:
            yield
        counts.update(inner)


def _count_syncs(fn: Callable[[], object], cuda: bool) -> int:
    """Host syncs ``fn`` makes (CUDA: "warn" mode's warnings visible to Python; CPU: :mod:`benchmarks._syncs`)."""
    if not cuda:
        with count_host_syncs() as counts:
            fn()
        return sum(counts.values())
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    return sum("synchroniz" in str(w.message) for w in caught)


def sync_check(trainer, capture, loss_and_backward: Callable[[], None], cuda: bool) -> dict:
    """PEPO's hooks and weighting under "no sync allowed"; syncs of a training pass for GRPO and PEPO."""
    result: dict = {"mode": "torch.cuda.set_sync_debug_mode('error')" if cuda else "counted on CPU (benchmarks._syncs)"}
    counts: Counter = Counter()
    _switch(trainer, capture, "pepo")
    flush = getattr(trainer, "_flush_token_stats", None)
    if flush is not None:
        flush()  # empty the pending statistics, so that no max_pending flush falls inside the guarded pass
    guarded = {}
    original_on_state = capture._on_state

    def on_state(index, hidden):
        with _no_sync_allowed(cuda, counts):
            original_on_state(index, hidden)

    capture._on_state = on_state  # record() registers self._on_state: the instance attribute wins
    guarded["hooks"] = True
    apply = getattr(trainer, "_apply_token_weights", None)
    if apply is not None:
        def apply_guarded(*a, **k):
            with _no_sync_allowed(cuda, counts):
                return apply(*a, **k)

        trainer._apply_token_weights = apply_guarded
    guarded["weighting_and_statistics"] = apply is not None
    try:
        loss_and_backward()
        result["error"] = None
    except RuntimeError as error:  # a sync inside the guarded code, on CUDA
        result["error"] = str(error).splitlines()[0][:300]
    finally:
        del capture._on_state
        if apply is not None:
            del trainer._apply_token_weights
    result["guarded"] = guarded
    result["syncs_in_guarded_code"] = None if cuda else dict(counts)
    result["sync_free"] = result["error"] is None and sum(counts.values()) == 0 and all(guarded.values())
    per_pass = {}
    for method in ("grpo", "pepo"):
        _switch(trainer, capture, method)
        per_pass[method] = _count_syncs(loss_and_backward, cuda)
    result["syncs_per_training_pass"] = per_pass
    result["syncs_per_statistics_flush"] = None if flush is None else _count_syncs(flush, cuda)
    return result


def trainer_section(name: str, methods: tuple[str, ...], gradient_checkpointing: bool, args: argparse.Namespace,
                    clock: Clock, report: Report, shares: tuple[str, str], with_sync_check: bool) -> dict:
    """Build one trainer; interleave full steps, then training passes; then peak memory (and the sync check)."""
    from pepo.hooks import VisualScoreCapture

    from benchmarks.peak_memory import _peak_bytes_cpu

    cuda = args.device.startswith("cuda")
    peak_bytes = cuda_peak_bytes if cuda else _peak_bytes_cpu
    data: dict = {"methods": list(methods), "gradient_checkpointing": gradient_checkpointing}
    built = time.perf_counter()
    with scratch_dir() as tmp:
        # initialised as PAPO_G so that a generation carries what PAPO / VPPO need; GRPO's loss, beta 0
        trainer, step = step_trainer(
            "papo_g", tmp, size="tiny" if args.tiny else "3b", device=args.device, dtype=args.dtype, attn=args.attn,
            prompts=args.prompts, generations=args.generations, completion_length=args.completion_length,
            image_size=args.image_size, layers=args.layers, vision_depth=args.vision_depth,
            gradient_checkpointing=gradient_checkpointing, loss_type="grpo", beta=0.0)
        capture = VisualScoreCapture(trainer.model, trainer.args.vision_score_type, trainer.args.vision_layers)
        text = trainer.model.config.get_text_config()
        vision = getattr(trainer.model.config, "vision_config", None)
        data["model"] = {
            "parameters_M": round(sum(p.numel() for p in trainer.model.parameters()) / 1e6, 1),
            "dtype": str(next(trainer.model.parameters()).dtype), "attention": trainer.model.config._attn_implementation,
            "layers": text.num_hidden_layers, "hidden": text.hidden_size, "heads": text.num_attention_heads,
            "kv_heads": text.num_key_value_heads, "mlp": text.intermediate_size, "vocab": text.vocab_size,
            "vision_depth": getattr(vision, "depth", None), "vision_hidden": getattr(vision, "hidden_size", None),
            "max_completion_length": trainer.args.max_completion_length,
        }
        data["build_s"] = time.perf_counter() - built
        own_ms: list[float] = []
        masked_ms: dict[str, list[float]] = {m: [] for m in methods}

        def full_step(method: str) -> float:
            _switch(trainer, capture, method)
            _sync(args.device)
            start = time.perf_counter()
            step()  # synchronises on CUDA before it returns
            seconds = time.perf_counter() - start
            metrics = trainer._metrics["train"]
            if method == "pepo":
                own_ms.append(metrics["pepo/overhead_ms"][-1])
            key = {"papo_g": "papo", "papo_d": "papo", "vppo": "vppo"}.get(method)
            if key and metrics.get(f"{key}/masked_forward_ms"):
                masked_ms[method].append(metrics[f"{key}/masked_forward_ms"][-1])
            return seconds

        warm = time.perf_counter()
        for method in methods:
            full_step(method)  # warm-up of each code path (allocator, kernels)
        data["warmup_s"] = time.perf_counter() - warm
        phase = time.perf_counter()
        steps = _interleaved(methods, full_step, shares[0], clock, args.min_rounds, args.max_step_rounds)
        data["step_s"] = steps
        data["phase_s"] = {"steps": time.perf_counter() - phase}
        report.save(name, data)

        phase = time.perf_counter()
        _switch(trainer, capture, "papo_g")
        batch = next(iter(trainer.get_train_dataloader()))
        trainer._buffered_inputs = None
        torch.manual_seed(0)
        inputs = trainer._prepare_inputs(batch)  # one generation shared by every training pass below
        data["shape"] = {"B": int(inputs["completion_ids"].shape[0]), "C": int(inputs["completion_ids"].shape[1]),
                         "S": int(inputs["prompt_ids"].shape[1] + inputs["completion_ids"].shape[1]),
                         "image_tokens_per_row": int((inputs["prompt_ids"] == trainer.image_token_id).sum(1).max())}

        def loss_and_backward() -> None:
            trainer.model.zero_grad(set_to_none=True)
            trainer.compute_loss(trainer.model, inputs).backward()

        def train_pass(method: str) -> float:
            _switch(trainer, capture, method)
            _sync(args.device)
            start = time.perf_counter()
            loss_and_backward()
            _sync(args.device)
            return time.perf_counter() - start

        for method in methods:
            train_pass(method)  # warm-up on the shared batch
        data["train_s"] = _interleaved(methods, train_pass, shares[1], clock, args.min_train_rounds,
                                       args.max_train_rounds)
        data["phase_s"]["training_passes"] = time.perf_counter() - phase
        report.save(name, data)
        phase = time.perf_counter()

        peaks = {}
        # On a CPU (the tiny test of this script) the profiler-based peak costs seconds a call: GRPO and PEPO only.
        peak_methods = methods if cuda else tuple(m for m in methods if m in ("grpo", "pepo"))
        variants = [(m, m, {}) for m in peak_methods] + [("pepo_weights_in_graph", "pepo", {"detach_weights": False})]
        for label, method, extra in variants:
            _switch(trainer, capture, method, **extra)
            loss_and_backward()  # warm-up of this variant (first-call allocations are not its peak)
            peaks[label] = min(peak_bytes(loss_and_backward) for _ in range(args.peak_repeats))
            trainer.args.detach_weights = True
        data["peak_bytes"] = peaks
        data["phase_s"]["peaks"] = time.perf_counter() - phase
        data["pepo_own_ms"] = own_ms
        data["masked_forward_ms"] = {m: v for m, v in masked_ms.items() if v}
        report.save(name, data)
        if with_sync_check:
            phase = time.perf_counter()
            report.save("sync_check", sync_check(trainer, capture, loss_and_backward, cuda))
            data["phase_s"]["sync_check"] = time.perf_counter() - phase
        trainer._token_stats = type(trainer._token_stats)()  # drop what is pending: nothing logs it
        data["seconds_at_end"] = clock.elapsed()
        report.save(name, data)
        del trainer, step, capture, inputs
    _free(args.device)
    return data


def _estimate_seconds(done: dict, methods: tuple[str, ...], args: argparse.Namespace) -> float:
    """Time the checkpointing-on section needs at least, from the checkpointing-off section's medians (x1.4)."""
    step = sum(statistics.median(done["step_s"][m]) for m in methods)
    train = sum(statistics.median(done["train_s"][m]) for m in methods)
    return done["build_s"] + 1.4 * ((1 + args.min_rounds) * step + (1 + args.min_train_rounds) * train
                                    + (len(methods) + 1) * args.peak_repeats * train / len(methods))


# --------------------------------------------------------------------------------------------
# summary.md
# --------------------------------------------------------------------------------------------


def _median(values) -> float | None:
    return statistics.median(values) if values else None


def _pct(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None else f"{100 * (a - b) / b:+.3f}%"


def summary(results: dict) -> str:
    """Markdown of everything measured so far (recomputed from results.json's content)."""
    lines = ["# GPU suite results", ""]
    h = results.get("header", {})
    if h:
        gpu = h.get("gpu")
        where = (f"{gpu['name']} ({gpu['memory_GiB']} GiB, {gpu['multiprocessors']} SMs, capability "
                 f"{gpu['capability']}, driver {gpu.get('driver')})" if gpu else f"CPU ({h.get('cpu')}, {h.get('cpu_count')} cores)")
        versions = ", ".join(f"{k} {v}" for k, v in h["versions"].items())
        lines += [f"- machine: {where}; CUDA {h.get('cuda')}, cuDNN {h.get('cudnn')}",
                  f"- Python {h['python']}; {versions}; torch build {h['torch_build']}",
                  f"- dtype {h['dtype']}, attention {h['attention']}, budget {h['minutes_budget']} min, "
                  f"started {h['started_utc']} UTC",
                  f"- command: `{h['command']}`", ""]
    k = results.get("kernel")
    if k:
        lines += ["## Similarity kernel vs the release's formulation",
                  "", "| dtype | B | L | V | C | D | pepo ms | release ms | speed-up | >= 10x (3B target) | pepo peak MB "
                  "| release peak MB | max abs diff |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in k["rows"]:
            ok = "met" if r["speedup"] >= k["target_speedup"] else "NOT met"
            lines.append(f"| {r['dtype']} | {r['B']} | {r['L']} | {r['V']} | {r['C']} | {r['D']} | {r['pepo_ms']:.2f} "
                         f"| {r['release_ms']:.2f} | {r['speedup']:.1f}x | {ok} | {r['pepo_alloc_MB']:.1f} | "
                         f"{r['release_alloc_MB']:.1f} | {r['max_abs_diff']:.1e} |")
        if k.get("skipped_for_time"):
            lines.append(f"\nskipped for time: {k['skipped_for_time']}")
        lines.append("")
    for name, title in (("steps_gc_off", "gradient checkpointing off"), ("steps_gc_on", "gradient checkpointing on")):
        d = results.get(name)
        if not d:
            continue
        if d.get("skipped"):
            lines += [f"## Steps, {title}", "", f"skipped: {d['skipped']}", ""]
            continue
        m = d.get("model", {})
        lines += [f"## Steps, {title}", "",
                  f"model: {m.get('parameters_M')}M parameters, {m.get('layers')} layers x {m.get('hidden')}, "
                  f"{m.get('heads')}/{m.get('kv_heads')} heads, MLP {m.get('mlp')}, vocabulary {m.get('vocab')}, "
                  f"vision {m.get('vision_depth')} x {m.get('vision_hidden')}, {m.get('dtype')}, {m.get('attention')}; "
                  f"batch {d.get('shape', {})}; built in {d.get('build_s', 0):.0f} s, warm-up {d.get('warmup_s', 0):.0f} s",
                  ""]
        base_step = _median(d.get("step_s", {}).get("grpo"))
        base_train = _median(d.get("train_s", {}).get("grpo"))
        base_peak = d.get("peak_bytes", {}).get("grpo")
        lines += ["| method | step ms (n) | vs GRPO | training pass ms (n) | vs GRPO | peak MB | vs GRPO | "
                  "masked forward ms |", "|---|---|---|---|---|---|---|---|"]
        for method in d["methods"] + ["pepo_weights_in_graph"]:
            st = d.get("step_s", {}).get(method, [])
            tr = d.get("train_s", {}).get(method, [])
            peak = d.get("peak_bytes", {}).get(method)
            if not st and not tr and peak is None:
                continue
            ms = _median(d.get("masked_forward_ms", {}).get(method))
            lines.append(
                f"| {method} | {'-' if not st else f'{1000 * _median(st):.1f} ({len(st)})'} | {_pct(_median(st), base_step)} | "
                f"{'-' if not tr else f'{1000 * _median(tr):.1f} ({len(tr)})'} | {_pct(_median(tr), base_train)} | "
                f"{'-' if peak is None else f'{peak / 2**20:.1f}'} | {_pct(peak, base_peak)} | "
                f"{'-' if ms is None else f'{ms:.1f}'} |")
        own = _median(d.get("pepo_own_ms"))
        pepo_step = _median(d.get("step_s", {}).get("pepo"))
        pepo_train = _median(d.get("train_s", {}).get("pepo"))
        if base_step and pepo_step:
            lines.append("")
            lines.append(f"PEPO step overhead (median step, t_pepo - t_grpo) / t_grpo = {_pct(pepo_step, base_step)} "
                         f"(target <= +0.1%)")
        if base_train and pepo_train and base_step:
            lines.append(f"PEPO training-pass difference as a share of GRPO's step = "
                         f"{100 * (pepo_train - base_train) / base_step:+.3f}%")
        if own is not None and pepo_step:
            lines.append(f"PEPO's own host time (pepo/overhead_ms, median) = {own:.2f} ms = "
                         f"{100 * own / 1000 / pepo_step:.3f}% of its step")
        if base_peak and d.get("peak_bytes", {}).get("pepo"):
            lines.append(f"PEPO peak vs GRPO = {_pct(d['peak_bytes']['pepo'], base_peak)} (target <= +0.5%)")
        lines.append("")
    s = results.get("sync_check")
    if s:
        lines += ["## Host syncs", "", f"- mode: {s['mode']}; guarded: {s['guarded']}",
                  f"- PEPO's hooks and weighting sync-free: **{s['sync_free']}**"
                  + (f" (error: {s['error']})" if s.get("error") else "")
                  + (f"; counted {s['syncs_in_guarded_code']}" if s.get("syncs_in_guarded_code") else ""),
                  f"- syncs per training pass (loss + backward): {s['syncs_per_training_pass']}",
                  f"- syncs per statistics flush (once per logging step): {s['syncs_per_statistics_flush']}", ""]
    if "end" in results:
        lines.append(f"total {results['end']['seconds']:.0f} s")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs") / time.strftime("gpu_suite-%Y%m%d-%H%M%S"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true",
                        help="the demo's tiny model and small kernel shapes (the CPU test of this script)")
    parser.add_argument("--minutes", type=float, default=None, help="time budget (default 7.5; 30 with --tiny)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                        help="model dtype (default bfloat16 on CUDA, float32 on CPU)")
    parser.add_argument("--attn", default="sdpa")
    parser.add_argument("--prompts", type=int, default=None,
                        help="default 2 (x 8 samples = 16 rows: with checkpointing off, 64 rows of 3B activations "
                             "would not fit in 141 GB)")
    parser.add_argument("--generations", type=int, default=None, help="default 8 (2 with --tiny)")
    parser.add_argument("--completion_length", type=int, default=None, help="default 256 (6 with --tiny)")
    parser.add_argument("--image_size", type=int, default=448, help="448 px = 256 image tokens (3B model)")
    parser.add_argument("--min_rounds", type=int, default=None, help="interleaved rounds that always run (default 2, 1 tiny)")
    parser.add_argument("--max_step_rounds", type=int, default=None, help="default 10 (1 with --tiny)")
    parser.add_argument("--min_train_rounds", type=int, default=None, help="default 3 (1 with --tiny)")
    parser.add_argument("--max_train_rounds", type=int, default=None, help="default 20 (1 with --tiny)")
    parser.add_argument("--peak_repeats", type=int, default=None, help="default 2 (1 with --tiny)")
    parser.add_argument("--kernel_repeats", type=int, default=None, help="default 5 (2 with --tiny)")
    parser.add_argument("--layers", type=int, default=None, help="fewer text layers (to try the 3B path on a CPU)")
    parser.add_argument("--vision_depth", type=int, default=None, help="fewer vision blocks (idem)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["kernel", "gc_off", "gc_on"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's; 1 on CPU)")
    args = parser.parse_args(argv)
    tiny = args.tiny
    # --tiny: its rounds are capped, not timed; a generous budget so a loaded machine never skips a section
    defaults = dict(minutes=30.0 if tiny else 7.5, prompts=2, generations=2 if tiny else 8,
                    completion_length=6 if tiny else 256, min_rounds=1 if tiny else 2,
                    max_step_rounds=1 if tiny else 10, min_train_rounds=1 if tiny else 3,
                    max_train_rounds=1 if tiny else 20,
                    peak_repeats=1 if tiny else 2, kernel_repeats=2 if tiny else 5)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    if tiny:
        args.kernel_B, args.kernel_L, args.kernel_V, args.kernel_C, args.kernel_D = 2, 3, [64], 32, 32
    else:  # 3B: 36 layers + the embedding output, width 2048
        args.kernel_B, args.kernel_L, args.kernel_V, args.kernel_C, args.kernel_D = 8, 37, [1024, 2048, 4096], 1024, 2048
    args.kernel_dtypes = ["bfloat16", "float32"]
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch sees no GPU: use --device cpu --tiny for the CPU path")
    if args.threads or not args.device.startswith("cuda"):
        torch.set_num_threads(args.threads or 1)
    clock = Clock(args.minutes)
    report = Report(args.out)
    report.save("header", header(args))
    print(f"gpu_suite: writing into {args.out}", flush=True)
    if "kernel" not in args.skip:
        kernel_section(args, clock, report)
        print(f"[{clock.elapsed():.0f} s] kernel done", flush=True)
    done = None
    if "gc_off" not in args.skip:
        done = trainer_section("steps_gc_off", ALL_METHODS, False, args, clock, report,
                               ("gc_off_steps", "gc_off_train"), with_sync_check=True)
        print(f"[{clock.elapsed():.0f} s] steps with gradient checkpointing off done", flush=True)
    if "gc_on" not in args.skip:
        shift = max(0.0, clock.elapsed() / clock.total - clock.shares["gc_off_end"])  # late: shift its deadlines
        need = _estimate_seconds(done, GC_ON_METHODS, args) if done else 0.0
        left = clock.total - clock.elapsed()
        if need > left:
            report.save("steps_gc_on", {"skipped": f"needs about {need:.0f} s, {left:.0f} s of the budget left"})
        else:
            for share in ("gc_on_steps", "gc_on_train"):
                clock.shares[share] += shift
            trainer_section("steps_gc_on", GC_ON_METHODS, True, args, clock, report,
                            ("gc_on_steps", "gc_on_train"), with_sync_check=False)
        print(f"[{clock.elapsed():.0f} s] steps with gradient checkpointing on done", flush=True)
    report.save("end", {"seconds": clock.elapsed()})
    print(summary(report.results), flush=True)
    return report.results


if __name__ == "__main__":
    main()
