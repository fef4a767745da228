"""PEPO's logged token statistics, kept on the device until the logging step.

Per micro-batch the trainer logs the mean perception score, the mean entropy, the number of rows
that fell back to uniform weights and percentiles of the token weights. Reading each of these back
to the host as it is computed stalls the GPU queue once per micro-batch; instead
:func:`micro_batch_stats` reduces a micro-batch to fixed-shape device tensors with no host sync, and
:class:`PendingTokenStats` keeps them until the logging step, where :meth:`PendingTokenStats.flush`
reduces every pending micro-batch across processes at once and reads the numbers back in ONE
device-to-host transfer. The values it appends to the metric lists are the ones the per-micro-batch
code appended (the same sums and the same exact percentiles over all processes' valid weights).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, MutableMapping

import torch

__all__ = ["PERCENTILES", "MicroBatchStats", "micro_batch_stats", "weight_percentiles", "PendingTokenStats"]

#: percentiles of the valid token weights logged as ``pepo/weight_p{p}``
PERCENTILES: tuple[int, ...] = (0, 20, 40, 60, 80, 100)
# torch.quantile's input is bounded (2**24 entries per row); a strided sample of a longer row is plenty.
_QUANTILE_SAMPLE = 1_000_000


@dataclass
class MicroBatchStats:
    """One micro-batch's statistics as device tensors (nothing here has been read by the host).

    ``sums``: (4,) float32 = (valid tokens, sum of finite perception scores over them, sum of their
    entropies, fallback rows); ``weights``: (B * C,) float32 valid token weights, NaN elsewhere, or
    ``None`` when the method has no weights; ``has_scores`` / ``has_entropies``: whether those sums mean
    anything (a method may have neither).
    """

    sums: torch.Tensor
    weights: torch.Tensor | None
    has_scores: bool
    has_entropies: bool


@torch.no_grad()
def micro_batch_stats(
    mask: torch.Tensor,
    scores: torch.Tensor | None,
    entropies: torch.Tensor | None,
    weights: torch.Tensor | None,
    fallback: torch.Tensor | None,
) -> MicroBatchStats:
    """Reduce a micro-batch to :class:`MicroBatchStats` with no host sync (fixed shapes, no branch on values).

    Args:
        mask: (B, C) bool, the valid completion tokens.
        scores: (B, C) perception scores or ``None``; non-finite scores count as 0 in the sum.
        entropies: (B, C) entropies in nats or ``None``.
        weights: (B, C) token weights or ``None``.
        fallback: (B,) bool rows that took uniform weights, or ``None``.
    """
    maskf = mask.float()
    zero = maskf.new_zeros(())
    sums = torch.stack([
        maskf.sum(),
        zero if scores is None else (torch.where(torch.isfinite(scores), scores, 0.0).float() * maskf).sum(),
        zero if entropies is None else (entropies.detach().float() * maskf).sum(),
        zero if fallback is None else fallback.sum().float(),
    ])
    valid = None
    if weights is not None:
        # NaN marks the padding: a boolean-mask selection would have a data-dependent size (a sync)
        valid = torch.where(mask, weights.detach().float(), math.nan).reshape(-1)
    return MicroBatchStats(sums, valid, scores is not None, entropies is not None)


def weight_percentiles(rows: torch.Tensor) -> torch.Tensor:
    """(k, len(PERCENTILES)) percentiles of each row's non-NaN entries, as ``torch.quantile`` (linear) gives them.

    Args:
        rows: (k, N) float32 valid token weights, NaN = no token (padding, or another process's padding).

    Returns:
        (k, len(PERCENTILES)) float32; NaN for a row without any entry. No host sync. A row longer than
        10**6 entries is read with a stride (torch.quantile's input is bounded; a sample is plenty).
    """
    if rows.shape[1] > _QUANTILE_SAMPLE:
        rows = rows[:, :: rows.shape[1] // _QUANTILE_SAMPLE + 1]
    # torch.quantile's linear rule, written out: torch.nanquantile checks its input on the device (a host
    # sync, and a graph break under torch 2.11's dynamo); sorting puts NaN last, so the n valid values lead.
    ordered = rows.sort(dim=1).values
    last = (~rows.isnan()).sum(dim=1, keepdim=True) - 1  # (k, 1) index of the largest valid value, -1 if none
    out = []
    for p in PERCENTILES:
        rank = last.clamp_min(0).to(rows.dtype) * (p / 100)
        below = rank.long()
        above = rank.ceil().long()
        low, high = ordered.gather(1, below), ordered.gather(1, above)
        out.append(torch.where(last >= 0, torch.lerp(low, high, rank - below.to(rows.dtype)), math.nan))
    return torch.cat(out, dim=1)


class PendingTokenStats:
    """Micro-batch statistics waiting for the logging step, per mode (``"train"`` / ``"eval"``).

    ``flush`` must be called by every process at the same point (it reduces and gathers): the
    trainer calls it when it logs, before it saves its resume state, and when ``max_pending``
    micro-batches have piled up (a count, hence the same on every process), which bounds the memory
    held between logs.
    """

    def __init__(self, max_pending: int = 64):
        self.max_pending = max_pending
        self._pending: list[tuple[str, MicroBatchStats]] = []

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, mode: str, stats: MicroBatchStats) -> bool:
        """Queue one micro-batch's statistics; returns True when a flush is due (``max_pending`` reached)."""
        self._pending.append((mode, stats))
        return len(self._pending) >= self.max_pending

    def flush(
        self,
        metrics: MutableMapping[str, MutableMapping[str, list]],
        reduce_sum: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
        gather_rows: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
    ) -> None:
        """Append every pending micro-batch's metrics to ``metrics[mode][name]``, in order, with one host read.

        Args:
            metrics: TRL's ``_metrics``: mode -> name -> list of floats.
            reduce_sum: sums a tensor over processes (``accelerator.reduce(t, "sum")``).
            gather_rows: (k, N) NaN-padded tensor of this process -> (P * k, N') of all P processes,
                process-major (``accelerator.gather(accelerator.pad_across_processes(t, dim=1, pad_index=nan))``).
        """
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        k = len(pending)
        sums = reduce_sum(torch.stack([s.sums for _, s in pending]))
        weights = None
        if any(s.weights is not None for _, s in pending):
            length = max(s.weights.numel() for _, s in pending if s.weights is not None)
            local = sums.new_full((k, length), math.nan)
            for i, (_, s) in enumerate(pending):
                if s.weights is not None:
                    local[i, : s.weights.numel()] = s.weights
            gathered = gather_rows(local)  # (P * k, N')
            processes = gathered.shape[0] // k
            weights = gathered.reshape(processes, k, -1).transpose(0, 1).reshape(k, -1)
        columns = [sums] + ([] if weights is None else [weight_percentiles(weights)])
        host = torch.cat(columns, dim=1).tolist()  # the one device-to-host read
        for (mode, s), row in zip(pending, host):
            out = metrics[mode]
            tokens = max(row[0], 1.0)
            if s.has_scores:
                out["pepo/vs_mean"].append(row[1] / tokens)
            if s.has_entropies:
                out["pepo/entropy_mean"].append(row[2] / tokens)
            if s.weights is None:
                continue
            out["pepo/uniform_fallback_rows"].append(row[3])
            if row[0] > 0:  # some process had a valid token (the valid weights are the valid tokens)
                for p, value in zip(PERCENTILES, row[4:]):
                    out[f"pepo/weight_p{p}"].append(value)
