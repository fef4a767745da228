"""PEPO's similarity kernel vs the release's formulation, timed side by side in one process.

The release (as described in ../shared/seeds) loops over layers and rows and builds the full
completion x image similarity matrix for each, then averages it over image tokens. pepo reduces
each layer with one matrix-vector product against the mean normalised image vector (cosine/dot),
so it never materialises C x V. Both are run here on the same random hidden states, interleaved,
and the ratio of medians is printed together with the largest single allocation each makes.

    python -m benchmarks.similarity_kernel                 # the issue's CPU point + a small grid (2 threads)
    python -m benchmarks.similarity_kernel --device cuda --dtype bfloat16 --B 8 --L 37 --V 1024 --C 1024 --D 2048
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from benchmarks._memory import cuda_peak_bytes
from pepo.weights import visual_similarity


def release_formulation(hidden_states, vision_mask, completion_length, score_type="cosine"):
    """Loop over layers and rows, full C x V similarity matrix each time (the formulation PEPO replaces)."""
    batch = vision_mask.shape[0]
    scores = [torch.zeros(completion_length, device=vision_mask.device, dtype=hidden_states[0].dtype)
              for _ in range(batch)]
    rows = [vision_mask[b].nonzero(as_tuple=True)[0] for b in range(batch)]
    for layer in hidden_states:
        for b in range(batch):
            vision = layer[b].index_select(0, rows[b])
            completion = layer[b, -completion_length:]
            if score_type == "cosine":
                vision, completion = F.normalize(vision, dim=-1), F.normalize(completion, dim=-1)
            scores[b] = scores[b] + (completion @ vision.T).mean(dim=1)  # (C, V) matrix
    return torch.stack(scores) / len(hidden_states)


def _sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _largest_allocation(fn, device) -> int:
    """Bytes of the largest single allocation made while ``fn`` runs (CPU: profiler; CUDA: peak delta)."""
    if device.startswith("cuda"):
        return cuda_peak_bytes(fn)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    sizes = [e.cpu_memory_usage for e in prof.events() if e.cpu_memory_usage > 0]
    return max(sizes, default=0)


def matmul_flops(fn) -> int:
    """Floating-point operations torch.profiler counts for ``fn`` (matrix products; deterministic, load-free)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], with_flops=True) as prof:
        fn()
    return int(sum(e.flops for e in prof.events() if e.flops))


def bench(B, L, V, C, D, device, dtype, repeats, score_type="cosine") -> dict:
    S = V + C + 32
    if device.startswith("cuda"):  # drawn on the GPU: 37 layers at 3B shapes are billions of numbers
        gen = torch.Generator(device=device).manual_seed(0)
        hidden = [torch.randn(B, S, D, generator=gen, device=device).to(dtype) for _ in range(L)]
    else:
        gen = torch.Generator(device="cpu").manual_seed(0)
        hidden = [torch.randn(B, S, D, generator=gen).to(device=device, dtype=dtype) for _ in range(L)]
    mask = torch.zeros(B, S, dtype=torch.bool, device=device)
    mask[:, 16 : 16 + V] = True

    def ours():
        with torch.no_grad():
            return visual_similarity(hidden, mask, C, score_type)

    def release():
        with torch.no_grad():
            return release_formulation(hidden, mask, C, score_type)

    err = (ours() - release().float()).abs().max().item()
    times = {"pepo": [], "release": []}
    for _ in range(repeats):
        for name, fn in (("pepo", ours), ("release", release)):
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    t_ours, t_rel = statistics.median(times["pepo"]), statistics.median(times["release"])
    return {
        "B": B, "L": L, "V": V, "C": C, "D": D, "pepo_ms": 1000 * t_ours, "release_ms": 1000 * t_rel,
        "speedup": t_rel / t_ours, "speedup_of_minima": min(times["release"]) / min(times["pepo"]), "pepo_alloc_MB": _largest_allocation(ours, device) / 2**20,
        "release_alloc_MB": _largest_allocation(release, device) / 2**20, "max_abs_diff": err,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2,
                        help="torch CPU threads (default 2, the project machine's cores: the recorded tables used 2)")
    for name in ("B", "L", "V", "C", "D"):
        parser.add_argument(f"--{name}", type=int, nargs="*")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    if any(getattr(args, n) for n in "BLVCD"):
        pick = lambda n, d: (getattr(args, n) or [d])  # noqa: E731
        grid = [(b, l, v, c, d) for b in pick("B", 2) for l in pick("L", 4) for v in pick("V", 2048)
                for c in pick("C", 1024) for d in pick("D", 1024)]
    else:  # the CPU target point, then how the gap grows with image and completion tokens
        grid = [(2, 4, 2048, 1024, 1024), (2, 4, 256, 128, 512), (2, 4, 1024, 512, 512), (2, 4, 4096, 2048, 512)]
    print(f"device {args.device}, dtype {args.dtype}, median of {args.repeats}, cosine; torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}")
    print("|  B |  L |    V |    C |    D | pepo ms | release ms | speed-up | pepo largest alloc MB | "
          "release largest alloc MB | max abs diff |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for B, L, V, C, D in grid:
        r = bench(B, L, V, C, D, args.device, dtype, args.repeats)
        print(f"| {B} | {L} | {V} | {C} | {D} | {r['pepo_ms']:.1f} | {r['release_ms']:.1f} | {r['speedup']:.1f}x | "
              f"{r['pepo_alloc_MB']:.2f} | {r['release_alloc_MB']:.2f} | {r['max_abs_diff']:.1e} |", flush=True)


if __name__ == "__main__":
    main()
