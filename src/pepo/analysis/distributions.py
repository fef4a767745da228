"""Visual similarity of correct vs incorrect responses (the paper's Figure 2).

Each response is reduced to three numbers computed from its per-token visual similarity
(cosine, unitless, in [-1, 1]): the mean over all tokens, the mean of its ``k`` most similar tokens
and the mean of its ``k`` least similar tokens. :class:`SimilarityDistributions` consumes records
(``pepo.analysis.records``) one at a time and keeps only these summaries, then draws the three
distributions for correct and incorrect responses and compares them.

Which comparison statistics are reported, and why:

* ``ks_D``: the two-sample Kolmogorov-Smirnov statistic, the largest vertical gap between the two
  groups' empirical CDFs. It is what the histograms show (how far apart the distributions are, in
  shape as well as location), is exact here (ties included) and needs no distributional assumption.
  It has no sign.
* ``ks_p``: its asymptotic p-value (Kolmogorov distribution with Stephens' small-sample correction).
  It assumes independent draws from continuous distributions; the responses of one prompt share the
  prompt and image, so they are not independent and the p-value is optimistic. Read it as a rough
  guide, not as a test result to quote.
* ``auc``: the Mann-Whitney AUC ``P(correct > incorrect) + 0.5 P(tie)``, the probability that a
  random correct response has the higher summary. It is the directional effect size the paper's
  claim is about (> 0.5: correct responses are more visually grounded) and is unit-free.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import matplotlib
import numpy as np

matplotlib.use("Agg")  # headless: runs on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402

from pepo.analysis.records import check_record  # noqa: E402

__all__ = [
    "SUMMARY_STATISTICS",
    "SimilarityDistributions",
    "auc",
    "kolmogorov_sf",
    "ks_two_sample",
    "response_summary",
]

#: (summary key, panel title); ``{k}`` is filled with the accumulator's k
SUMMARY_STATISTICS = (
    ("global_mean", "Global mean over tokens"),
    ("top_k_mean", "Mean of the top-{k} tokens"),
    ("bottom_k_mean", "Mean of the bottom-{k} tokens"),
)

_COLORS = {"correct": "tab:blue", "incorrect": "tab:orange"}


def response_summary(similarity: Sequence[float], k: int) -> dict[str, float]:
    """Summaries of one response's per-token visual similarity (C values, cosine).

    Returns ``global_mean`` (mean over the C tokens), ``top_k_mean`` (mean of the ``min(k, C)``
    largest values) and ``bottom_k_mean`` (mean of the ``min(k, C)`` smallest). Raises
    ``ValueError`` for an empty list or ``k < 1``.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    values = np.sort(np.asarray(similarity, dtype=np.float64).ravel())
    if values.size == 0:
        raise ValueError("response_summary needs at least one token's similarity, got none")
    m = min(k, values.size)  # a response shorter than k: all its tokens
    return {
        "global_mean": float(values.mean()),
        "top_k_mean": float(values[-m:].mean()),
        "bottom_k_mean": float(values[:m].mean()),
    }


def _sample(values: Sequence[float], name: str) -> np.ndarray:
    x = np.sort(np.asarray(values, dtype=np.float64).ravel())
    if x.size == 0:
        raise ValueError(f"sample {name!r} is empty")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"sample {name!r} contains NaN or infinite values")
    return x


def kolmogorov_sf(lam: float) -> float:
    """Survival function Q(lam) = P(K > lam) of the Kolmogorov distribution.

    ``Q(lam) = 2 sum_{j>=1} (-1)^(j-1) exp(-2 j^2 lam^2)``. That alternating series converges slowly
    for small ``lam``, so below 1.18 the equivalent Jacobi-theta form
    ``1 - sqrt(2 pi)/lam sum_{j>=1} exp(-(2j-1)^2 pi^2 / (8 lam^2))`` is used instead.
    """
    if lam <= 0.0:
        return 1.0
    if lam < 1.18:
        y = math.exp(-math.pi**2 / (8.0 * lam * lam))
        cdf = math.sqrt(2.0 * math.pi) / lam * sum(y ** ((2 * j - 1) ** 2) for j in range(1, 8))
        q = 1.0 - cdf
    else:
        q = 0.0
        for j in range(1, 101):
            term = math.exp(-2.0 * j * j * lam * lam)
            q += term if j % 2 else -term
            if term < 1e-17:
                break
        q *= 2.0
    return min(1.0, max(0.0, q))


def ks_two_sample(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov test: ``(D, p)``.

    ``D = max_x |F_a(x) - F_b(x)|`` over the right-continuous empirical CDFs, evaluated at every
    distinct value of the pooled sample, so tied values (within or across samples) are exact.
    ``p`` is asymptotic: ``Q((sqrt(n) + 0.12 + 0.11/sqrt(n)) D)`` with the effective size
    ``n = n_a n_b / (n_a + n_b)`` and ``Q`` = :func:`kolmogorov_sf` (Stephens' correction, as in
    Numerical Recipes' ``kstwo``). Ties make the true null distribution discrete, so ``p`` is then
    conservative. Raises ``ValueError`` for an empty or non-finite sample.
    """
    xa, xb = _sample(a, "a"), _sample(b, "b")
    grid = np.union1d(xa, xb)
    cdf_a = np.searchsorted(xa, grid, side="right") / xa.size
    cdf_b = np.searchsorted(xb, grid, side="right") / xb.size
    d = float(np.max(np.abs(cdf_a - cdf_b)))
    en = math.sqrt(xa.size * xb.size / (xa.size + xb.size))
    return d, kolmogorov_sf((en + 0.12 + 0.11 / en) * d)


def auc(a: Sequence[float], b: Sequence[float]) -> float:
    """Mann-Whitney AUC: ``P(X_a > X_b) + 0.5 P(X_a = X_b)`` over all ``n_a * n_b`` pairs, in [0, 1].

    Equals ``U_a / (n_a n_b)`` with the Mann-Whitney U statistic of ``a``; 0.5 means no separation.
    Raises ``ValueError`` for an empty or non-finite sample.
    """
    xa, xb = _sample(a, "a"), _sample(b, "b")
    below = np.searchsorted(xb, xa, side="left")  # b values strictly below each a value
    ties = np.searchsorted(xb, xa, side="right") - below
    return float((below.sum() + 0.5 * ties.sum()) / (xa.size * xb.size))


def _group_stats(values: np.ndarray) -> tuple[float | None, float | None]:
    if values.size == 0:
        return None, None
    return float(values.mean()), float(values.std())  # ddof=0: spread of the group, defined for n=1


class SimilarityDistributions:
    """Streaming accumulator for Figure 2: correct vs incorrect responses' visual similarity.

    ``add`` keeps one small summary per response (:func:`response_summary` plus id, sample,
    reward, correctness and token count), never the token lists. Responses without tokens carry no
    similarity; they are counted in ``n_empty`` and left out.

    Args:
        k: K of the top-K / bottom-K means.
        max_fraction: per response, K is capped at ``max(1, floor(max_fraction * n_tokens))`` so
            that on short responses the top-K and bottom-K stay distinct from the global mean
            (with K >= n_tokens all three would be the same number).
    """

    def __init__(self, k: int = 10, max_fraction: float = 0.25) -> None:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if not 0 < max_fraction <= 1:
            raise ValueError(f"max_fraction must be in (0, 1], got {max_fraction}")
        self.k = k
        self.max_fraction = max_fraction
        self.summaries: list[dict] = []
        self.n_empty = 0

    def add(self, record: dict) -> None:
        """Summarise one response record (``pepo.analysis.records``; fields checked)."""
        check_record(record)
        if not record["similarity"]:
            self.n_empty += 1
            return
        self.summaries.append({
            "id": record["id"],
            "sample": record["sample"],
            "correct": bool(record["correct"]),
            "reward": float(record["reward"]),
            "n_tokens": len(record["similarity"]),
            **response_summary(record["similarity"], self.effective_k(len(record["similarity"]))),
        })

    def effective_k(self, n_tokens: int) -> int:
        """K used for a response of ``n_tokens`` tokens: ``min(k, max(1, floor(max_fraction * n_tokens)))``."""
        return min(self.k, max(1, int(self.max_fraction * n_tokens)))

    def _groups(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        correct = np.array([s[key] for s in self.summaries if s["correct"]], dtype=np.float64)
        incorrect = np.array([s[key] for s in self.summaries if not s["correct"]], dtype=np.float64)
        return correct, incorrect

    def statistics(self) -> dict[str, dict]:
        """Per summary key: group sizes, mean and std (ddof=0, cosine) per group, ks_D, ks_p and
        auc = P(correct > incorrect) + 0.5 P(tie); comparisons are ``None`` when a group is empty."""
        out = {}
        for key, _ in SUMMARY_STATISTICS:
            correct, incorrect = self._groups(key)
            mean_c, std_c = _group_stats(correct)
            mean_i, std_i = _group_stats(incorrect)
            both = correct.size > 0 and incorrect.size > 0
            d, p = ks_two_sample(correct, incorrect) if both else (None, None)
            out[key] = {
                "n_correct": int(correct.size), "n_incorrect": int(incorrect.size),
                "mean_correct": mean_c, "std_correct": std_c,
                "mean_incorrect": mean_i, "std_incorrect": std_i,
                "ks_D": d, "ks_p": p, "auc": auc(correct, incorrect) if both else None,
            }
        return out

    def write(self, out_dir: str | Path, meta: dict) -> dict:
        """Write ``similarity_distributions.png`` and ``.json`` into ``out_dir``; return the JSON dict.

        ``meta`` is the analysis folder's ``meta.json`` (``model`` and ``task`` name the figure). The
        JSON holds ``k``, ``statistics`` (see :meth:`statistics`), ``responses`` (the per-response
        summaries, enough to redraw the figure) and counts. A missing group gives ``None`` statistics
        and a note in the title rather than an error.
        """
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        stats = self.statistics()
        n_correct = sum(s["correct"] for s in self.summaries)
        n_incorrect = len(self.summaries) - n_correct
        note = ""
        if not self.summaries:
            note = "no responses with tokens"
        elif n_correct == 0 or n_incorrect == 0:
            note = f"no {'correct' if n_correct == 0 else 'incorrect'} responses: nothing to compare"

        fig, axes = plt.subplots(1, 3, figsize=(13, 4.2), dpi=110)
        for ax, (key, panel) in zip(axes, SUMMARY_STATISTICS):
            groups = dict(zip(("correct", "incorrect"), self._groups(key)))
            pooled = np.concatenate(list(groups.values()))
            if pooled.size:
                # shared bins so the two histograms are comparable bar by bar
                bins = np.histogram_bin_edges(pooled, bins=int(np.clip(np.sqrt(pooled.size), 8, 40)))
                for name, values in groups.items():
                    if values.size:
                        ax.hist(values, bins=bins, density=True, alpha=0.5, color=_COLORS[name],
                                edgecolor=_COLORS[name], label=f"{name} (n={values.size})")
                ax.legend(fontsize=8, loc="best")
            else:
                ax.text(0.5, 0.5, "no responses", ha="center", va="center", transform=ax.transAxes)
            s = stats[key]
            if s["ks_D"] is not None:
                text = f"KS D = {s['ks_D']:.3f}, p = {s['ks_p']:.2g}, AUC = {s['auc']:.3f}"
            else:
                text = "KS D, p, AUC: n/a (one group empty)"
            # the statistics go in the title, where they cannot hide bars
            k_text = f"{self.k} (at most {self.max_fraction:.0%} of a response)"
            ax.set_title(f"{panel.format(k=k_text)}\n{text}", fontsize=10)
            ax.set_xlabel("visual similarity (cosine)")
            ax.set_ylabel("density")
            ax.grid(alpha=0.3)
        model, task = meta.get("model", "?"), meta.get("task", "?")
        title = (f"Visual similarity of correct vs incorrect responses: {model} on {task} "
                 f"({n_correct} correct, {n_incorrect} incorrect; AUC = P(correct > incorrect))")
        if note:
            title += f"\nNOTE: {note}"
        fig.suptitle(title, fontsize=10)
        fig.tight_layout(rect=(0, 0, 1, 0.9 if note else 0.93))
        png = out_dir / "similarity_distributions.png"
        fig.savefig(png)
        plt.close(fig)

        payload = {
            "model": meta.get("model"), "task": meta.get("task"), "k": self.k,
            "k_max_fraction": self.max_fraction,
            "n_correct": n_correct, "n_incorrect": n_incorrect, "n_empty": self.n_empty,
            "note": note or None, "statistics": stats, "responses": self.summaries,
        }
        (out_dir / "similarity_distributions.json").write_text(json.dumps(payload, indent=1))
        return payload
