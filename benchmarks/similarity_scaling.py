"""How the similarity kernel's time grows with completion length C and image tokens V (plot + table).

pepo's cosine/dot kernel reads each image and completion token once per layer: O(L (V + C) D). The
release's formulation builds C x V matrices: O(L C V D). Both are timed over a sweep of C (V fixed)
and of V (C fixed), and the result is plotted against V + C.

    python -m benchmarks.similarity_scaling [--out docs/similarity_scaling.png]
"""

from __future__ import annotations

import argparse

import matplotlib
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from benchmarks.similarity_kernel import bench  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/similarity_scaling.png")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2,
                        help="torch CPU threads (default 2, the project machine's cores: the recorded table used 2)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, median of {args.repeats}")
    sizes = (256, 512, 1024, 2048, 4096)
    sweeps = {"C varies (V = 1024)": [(1024, c) for c in sizes], "V varies (C = 1024)": [(v, 1024) for v in sizes]}
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), dpi=110)
    print("| sweep | V | C | pepo ms | release ms |\n|---|---|---|---|---|")
    for ax, (title, points) in zip(axes, sweeps.items()):
        rows = [bench(2, 4, v, c, 512, "cpu", torch.float32, args.repeats) for v, c in points]
        x = [v + c for v, c in points]
        for key, label in (("pepo_ms", "pepo (mean image vector)"), ("release_ms", "release (C x V matrices)")):
            ax.plot(x, [r[key] for r in rows], marker="o", label=label)
        for (v, c), r in zip(points, rows):
            print(f"| {title} | {v} | {c} | {r['pepo_ms']:.1f} | {r['release_ms']:.1f} |", flush=True)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("V + C (tokens)")
        ax.set_ylabel("time per call (ms, log)")
        ax.set_title(f"{title}; B=2, L=4, D=512, CPU fp32, {args.threads} threads", fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle("Visual-similarity kernel: time vs number of image + completion tokens", fontsize=10)
    fig.tight_layout()
    fig.savefig(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
