"""The paper's Figure 3 (left): how much each token's hidden states move when the image is taken away.

If visual similarity measures perception, tokens with high similarity should depend more on the
image than tokens with low similarity: their hidden states should shift more when the image is
blanked or removed. :class:`ShiftAnalysis` consumes one response at a time (its per-token
similarity and its (L+1, C) per-layer shift from :class:`pepo.analysis.tokens.HiddenShiftCapture`),
splits each response's tokens into its top and bottom similarity quantile, and keeps only running
sums per layer, exact running moments for the correlation, and a bounded reservoir of points for
the scatter plot.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Sequence

import torch

__all__ = ["ShiftAnalysis"]


class ShiftAnalysis:
    """Streaming comparison of the hidden-state shift of high- and low-similarity tokens.

    Args:
        quantile: fraction of each response's tokens in the high (top) and low (bottom) group;
            at least one token each; responses with fewer than 2 tokens are not grouped.
        max_points: size of the reservoir sample of (similarity, shift) points drawn in the scatter.
        seed: seed of the reservoir sampling.
        mode: how the image was taken away (``"blank"`` or ``"remove"``), for the figure's title.
    """

    def __init__(self, quantile: float = 0.25, max_points: int = 20000, seed: int = 0, mode: str = "blank"):
        if not 0 < quantile <= 0.5:
            raise ValueError(f"quantile must be in (0, 0.5], got {quantile!r}")
        self.quantile = quantile
        self.max_points = max_points
        self._rng = random.Random(seed)
        self._sums = {"high": None, "low": None}  # (L+1,) float64 sums of per-layer shift
        self._counts = {"high": 0, "low": 0}
        self._moments = [0.0] * 6  # n, sum x, sum y, sum xx, sum yy, sum xy over all tokens
        self._points: list[tuple[float, float]] = []
        self._seen = 0
        self.mode = mode

    def add(self, similarity: Sequence[float], layer_shift: torch.Tensor) -> None:
        """Add one response.

        Args:
            similarity: C per-token visual similarities.
            layer_shift: (L+1, C) per-hidden-state shift ``1 - cos`` of the same tokens.
        """
        shift = torch.as_tensor(layer_shift, dtype=torch.float64)
        sim = torch.as_tensor(list(similarity), dtype=torch.float64)
        if shift.dim() != 2 or shift.shape[1] != sim.shape[0]:
            raise ValueError(f"layer_shift must be (L+1, C) with C = {sim.shape[0]} tokens, got {tuple(shift.shape)}")
        token_shift = shift.mean(dim=0)
        for x, y in zip(sim.tolist(), token_shift.tolist()):
            m = self._moments
            m[0] += 1; m[1] += x; m[2] += y; m[3] += x * x; m[4] += y * y; m[5] += x * y  # noqa: E702
            self._seen += 1
            if len(self._points) < self.max_points:
                self._points.append((x, y))
            else:
                j = self._rng.randrange(self._seen)
                if j < self.max_points:
                    self._points[j] = (x, y)
        c = sim.shape[0]
        if c < 2:
            return
        k = max(1, int(math.floor(self.quantile * c)))
        order = torch.argsort(sim, stable=True)
        for group, index in (("low", order[:k]), ("high", order[-k:])):
            total = shift[:, index].sum(dim=1)
            self._sums[group] = total if self._sums[group] is None else self._sums[group] + total
            self._counts[group] += k

    def summary(self) -> dict:
        """Per-layer and overall mean shift of the high/low groups, their ratio, and Pearson r over all tokens."""
        per_layer = {g: (self._sums[g] / self._counts[g]).tolist() if self._counts[g] else None for g in self._sums}
        overall = {g: sum(v) / len(v) if v else None for g, v in per_layer.items()}
        n, sx, sy, sxx, syy, sxy = self._moments
        r = None
        if n > 1:
            vx, vy = n * sxx - sx * sx, n * syy - sy * sy
            if vx > 0 and vy > 0:
                r = (n * sxy - sx * sy) / math.sqrt(vx * vy)
        ratio = overall["high"] / overall["low"] if overall["high"] is not None and overall["low"] else None
        return {
            "mode": self.mode, "quantile": self.quantile, "tokens": int(n),
            "tokens_high": self._counts["high"], "tokens_low": self._counts["low"],
            "mean_shift_high": overall["high"], "mean_shift_low": overall["low"], "ratio_high_to_low": ratio,
            "pearson_similarity_shift": r,
            "per_layer_shift_high": per_layer["high"], "per_layer_shift_low": per_layer["low"],
            "unit": "1 - cosine(hidden state with image, hidden state without), mean over hidden states",
        }

    def write(self, out_dir: Path, meta: dict) -> dict:
        """Write ``hidden_state_shift.png`` (per-layer curves + scatter) and ``hidden_state_shift.json``."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        summary = self.summary()
        (out_dir / "hidden_state_shift.json").write_text(json.dumps({**summary, "meta": meta}, indent=2))
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=150)
        q = int(round(100 * self.quantile))
        for group, colour in (("high", "#c0392b"), ("low", "#2471a3")):
            values = summary[f"per_layer_shift_{group}"]
            if values:
                left.plot(range(len(values)), values, marker="o", ms=3, color=colour,
                          label=f"{'top' if group == 'high' else 'bottom'} {q}% similarity "
                                f"({summary[f'tokens_{group}']} tokens)")
        left.xaxis.get_major_locator().set_params(integer=True)
        left.set_xlabel("hidden state (0 = embeddings, L = after final norm)")
        left.set_ylabel("shift: 1 - cosine (unitless)")
        left.set_title("shift per layer, high vs low similarity tokens", fontsize=10)
        if summary["tokens_high"]:
            left.legend(fontsize=8)
        if self._points:
            xs, ys = zip(*self._points)
            right.scatter(xs, ys, s=4, alpha=0.35, color="#555555", linewidths=0)
        r = summary["pearson_similarity_shift"]
        right.set_title(f"per token ({summary['tokens']} tokens; Pearson r = {r:.3f})" if r is not None
                        else f"per token ({summary['tokens']} tokens)", fontsize=10)
        right.set_xlabel("visual similarity (cosine, mean over hidden states)")
        right.set_ylabel("shift: 1 - cosine, mean over hidden states")
        name = f"{meta.get('model', '?')} on {meta.get('task', '?')}"
        ratio = summary["ratio_high_to_low"]
        fig.suptitle(f"Hidden-state shift with the image {'blanked' if self.mode == 'blank' else 'removed'} - {name}"
                     + (f" (high/low = {ratio:.2f}x)" if ratio is not None else ""), fontsize=11)
        fig.tight_layout()
        png = out_dir / "hidden_state_shift.png"
        fig.savefig(png)
        plt.close(fig)
        return summary
