"""VGPO (Wang et al., ACL 2026; public code wzb-bupt/VGPO): visually-guided token and trajectory re-weighting.

Everything comes from the training forward pepo already runs (no extra forward, no masked image).
Per micro-batch, with ``s_it = cos(h_it, mean_j h_ij)`` the cosine of completion token t's last-layer
hidden state (after the final norm) to the mean of the image tokens' last-layer hidden states
(``vision_score_type cosine_to_mean``, ``vision_layers [-1]``, set by the preset), as the public
code's ``_compute_visual_attention_weights`` and ``update_policy`` do:

1. visual focus ``w = (s - lo) / (hi - lo + 1e-8)``, lo / hi the min / max over the **whole
   micro-batch**, where padding positions and rows without an image count as similarity 0 (the
   public code pads every response to ``max_response_length`` with zero hidden states);
2. visual attention compensation (Eq. 5-6): ``c_t = beta * (t - t0) / (t1 - t0 + 1e-8)`` over the
   response's valid positions t0..t1 (linear schedule, start 0); gate ``G_t = 1`` for the tokens of
   the response's tail (valid-token index >= int(n * gamma)) whose w is at or above the tail's
   ``max(1, int(m * kappa))``-th largest, else 0; ``w' = w * (1 + G_t * c_t)``;
3. per response min-max of w' over its valid tokens (``+ 1e-8``): ``w_hat`` (Eq. 7);
4. intra-trajectory factor ``psi_t = clamp(1 + w_hat_t - mean_t(w_hat), 0.1, 2.0)`` (Eq. 8);
5. inter-trajectory factor (Eq. 9-11): ``phi_i = sum_t w_hat_it``; min-max over a set of rows
   (``+ 1e-8``), ``alpha_i = clamp(1 + phi_norm_i - mean(phi_norm), 0.9, 2.0)``. The set, as the public
   code: consecutive chunks of ``num_generations`` rows of the micro-batch when it holds at least that
   many (rows past the last whole chunk keep 1), else the whole micro-batch;
6. token advantage ``A_i * alpha_i * psi_it`` on the clipped surrogate.

Rows without an image token or with a non-finite score get ``w_hat = 0`` (so ``psi = 1``, ``phi = 0``) and are
counted in ``pepo/uniform_fallback_rows``; their similarity still counts as 0 in step 1's range.

Loss shape of the public script (EasyR1 defaults + ``examples/configs/config.yaml``): clip 0.2 / 0.28,
dual clip 3.0, micro-batch token means weighted by their token share of the update batch, no KL
(``disable_kl``), online filtering on accuracy, no overlong filtering: TRL ``loss_type dapo``,
``epsilon_high 0.28``, ``delta 3.0``, ``beta 0``, ``dynamic_sampling_filter accuracy``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from pepo.methods.base import LossContext, Method, TokenWeights

__all__ = ["VGPO", "VGPOArguments", "vgpo_focus", "vgpo_compensation", "vgpo_gate", "vgpo_intra_factors",
           "vgpo_inter_factors", "vgpo_terms"]

_EPS = 1e-8  # the public code's range floor in every min-max
_SIMILARITIES = ("cosine_to_mean", "cosine")


@dataclass
class VGPOArguments:
    """Options of method ``vgpo`` (mixed into ``PEPOConfig``); defaults are the public ``train_vgpo_7B.sh``."""

    vgpo_compensation_strength: float = field(
        default=0.3, metadata={"help": "VGPO: beta of the visual attention compensation beta * t / T (Eq. 5); 0 = off."}
    )
    vgpo_gate_start: float = field(
        default=0.5,
        metadata={"help": "VGPO: gamma, only tokens from valid-token index int(n * gamma) on can pass the gate (Eq. 6)."},
    )
    vgpo_gate_fraction: float = field(
        default=0.2, metadata={"help": "VGPO: kappa, the top fraction of those tail tokens by visual focus that pass."}
    )
    vgpo_intra_min: float = field(default=0.1, metadata={"help": "VGPO: lower clamp of the token factor psi (Eq. 8)."})
    vgpo_intra_max: float = field(default=2.0, metadata={"help": "VGPO: upper clamp of the token factor psi."})
    vgpo_inter_min: float = field(
        default=0.9, metadata={"help": "VGPO: lower clamp of the trajectory factor alpha (Eq. 11)."}
    )
    vgpo_inter_max: float = field(default=2.0, metadata={"help": "VGPO: upper clamp of the trajectory factor alpha."})
    vgpo_intra: bool = field(default=True, metadata={"help": "VGPO: apply the token factor psi (intra-trajectory)."})
    vgpo_inter: bool = field(
        default=True, metadata={"help": "VGPO: apply the trajectory factor alpha (inter-trajectory)."}
    )
    vgpo_similarity: str = field(
        default="cosine_to_mean",
        metadata={"help": "VGPO: its visual focus score, `cosine_to_mean` (the public code: cosine to the mean image "
                  "vector) or `cosine` (pepo's mean of cosines); sets vision_score_type."},
    )

    def check_vgpo(self) -> None:
        """Validate the VGPO options (ValueError naming the field)."""
        if self.vgpo_compensation_strength < 0:
            raise ValueError(f"vgpo_compensation_strength must be >= 0, got {self.vgpo_compensation_strength}.")
        if not 0.0 <= self.vgpo_gate_start < 1.0:
            raise ValueError(f"vgpo_gate_start must be in [0, 1), got {self.vgpo_gate_start}.")
        if not 0.0 < self.vgpo_gate_fraction <= 1.0:
            raise ValueError(f"vgpo_gate_fraction must be in (0, 1], got {self.vgpo_gate_fraction}.")
        for kind in ("intra", "inter"):
            low, high = getattr(self, f"vgpo_{kind}_min"), getattr(self, f"vgpo_{kind}_max")
            if not 0.0 <= low <= high:
                raise ValueError(f"vgpo_{kind}_min / vgpo_{kind}_max must satisfy 0 <= min <= max, got {low} / {high}.")
        if self.vgpo_similarity not in _SIMILARITIES:
            raise ValueError(f"vgpo_similarity={self.vgpo_similarity!r}: choose one of {list(_SIMILARITIES)}.")


# --- the quantities, pure functions of (B, C) tensors ---------------------------------------------


def vgpo_focus(scores: torch.Tensor, mask: torch.Tensor, valid_rows: torch.Tensor) -> torch.Tensor:
    """Step 1: (B, C) float32 visual focus ``w`` in [0, 1], min-max over the micro-batch, 0 on padding.

    Args:
        scores: (B, C) similarity of each completion token to the image (any float dtype).
        mask: (B, C) bool valid completion tokens.
        valid_rows: (B,) bool rows with an image token and finite scores; the others count as 0.
    """
    s = torch.where(mask & valid_rows[:, None], scores.float(), 0.0)
    # padding and image-less rows are similarity 0 in the public code's range (zero hidden states / zero rows)
    lo, hi = s.min().clamp(max=0.0), s.max().clamp(min=0.0)
    return torch.where(mask, (s - lo) / (hi - lo + _EPS), 0.0)


def _valid_index(mask: torch.Tensor) -> torch.Tensor:
    """(B, C) int64 index of each valid token among its response's valid tokens (0, 1, ...)."""
    return mask.long().cumsum(dim=1) - 1


def vgpo_compensation(mask: torch.Tensor, strength: float) -> torch.Tensor:
    """Step 2a: (B, C) float32 ``c_t = strength * (t - t0) / (t1 - t0 + 1e-8)`` over each row's valid positions.

    t are sequence positions (0..C-1), t0 / t1 the row's first / last valid position; 0 on padding.
    """
    positions = torch.arange(mask.shape[1], device=mask.device, dtype=torch.float32).expand_as(mask)
    first = torch.where(mask, positions, float("inf")).min(dim=1, keepdim=True).values
    last = torch.where(mask, positions, float("-inf")).max(dim=1, keepdim=True).values
    normalised = (positions - first) / (last - first + _EPS)
    # the public code's (pos - start) / (1 - start + 1e-8) with start 0: a factor 1 / (1 + 1e-8)
    return torch.where(mask, strength * normalised / (1.0 + _EPS), 0.0)


def vgpo_gate(focus: torch.Tensor, mask: torch.Tensor, start: float, fraction: float) -> torch.Tensor:
    """Step 2b: (B, C) bool gate: tail tokens (valid index >= int(n * start)) whose focus is at or above the
    tail's k-th largest, k = max(1, int(m * fraction)), m the tail's length (ties all pass)."""
    index = _valid_index(mask)
    n = mask.sum(dim=1, keepdim=True)
    # Python's int(n * start) on doubles, as the public code
    first = torch.floor(n.double() * start).long()
    tail = mask & (index >= first)
    m = (n - first).clamp(min=0)
    k = torch.floor(m.double() * fraction).long().clamp(min=1)
    ordered = torch.where(tail, focus, float("-inf")).sort(dim=1, descending=True).values
    threshold = ordered.gather(1, (k - 1).clamp(max=mask.shape[1] - 1))
    return tail & (focus >= threshold)


def _row_minmax(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    lo = torch.where(mask, x, float("inf")).min(dim=1, keepdim=True).values
    hi = torch.where(mask, x, float("-inf")).max(dim=1, keepdim=True).values
    return torch.where(mask, (x - lo) / (hi - lo + _EPS), 0.0)


def vgpo_intra_factors(w_hat: torch.Tensor, mask: torch.Tensor, clamp: tuple[float, float]) -> torch.Tensor:
    """Step 4: (B, C) ``psi = clamp(1 + w_hat - mean_valid(w_hat), *clamp)``; 1 on padding (as the public code)."""
    count = mask.sum(dim=1, keepdim=True).clamp(min=1)
    mean = (w_hat * mask).sum(dim=1, keepdim=True) / count
    return torch.where(mask, (1.0 + w_hat - mean).clamp(*clamp), 1.0)


def vgpo_inter_factors(w_hat: torch.Tensor, mask: torch.Tensor, group_size: int,
                       clamp: tuple[float, float]) -> torch.Tensor:
    """Step 5: (B,) ``alpha``: ``phi_i = sum_t w_hat_it``, min-max over consecutive chunks of ``group_size`` rows
    (rows past the last whole chunk: 1) when B >= group_size > 1, else over the whole micro-batch."""
    phi = (w_hat * mask).sum(dim=1)

    def factors(values: torch.Tensor) -> torch.Tensor:
        normalised = (values - values.min(dim=-1, keepdim=True).values) / (
            values.max(dim=-1, keepdim=True).values - values.min(dim=-1, keepdim=True).values + _EPS)
        return (1.0 + normalised - normalised.mean(dim=-1, keepdim=True)).clamp(*clamp)

    rows = phi.shape[0]
    if group_size > 1 and rows >= group_size:
        whole = rows // group_size * group_size
        alpha = torch.ones_like(phi)
        alpha[:whole] = factors(phi[:whole].view(-1, group_size)).reshape(-1)
        return alpha
    return factors(phi)


def vgpo_terms(scores: torch.Tensor, mask: torch.Tensor, valid_rows: torch.Tensor, args: Any) -> dict[str, torch.Tensor]:
    """All of VGPO's quantities for one micro-batch (float32; see the module docstring for the steps)."""
    focus = vgpo_focus(scores, mask, valid_rows)
    compensation = vgpo_compensation(mask, args.vgpo_compensation_strength)
    # rows without an image (or with non-finite scores) have no focus: uniform psi = 1 and phi = 0 (the public code
    # would give an image-less row its constant focus times the compensation ramp, and NaN everywhere for a NaN)
    gate = vgpo_gate(focus, mask, args.vgpo_gate_start, args.vgpo_gate_fraction) & valid_rows[:, None]
    w_hat = _row_minmax(focus * (1.0 + gate * compensation), mask & valid_rows[:, None])
    psi = vgpo_intra_factors(w_hat, mask, (args.vgpo_intra_min, args.vgpo_intra_max))
    alpha = vgpo_inter_factors(w_hat, mask, args.num_generations, (args.vgpo_inter_min, args.vgpo_inter_max))
    return {"focus": focus, "compensation": compensation, "gate": gate, "w_hat": w_hat, "psi": psi, "alpha": alpha}


class VGPO(Method):
    name = "vgpo"
    description = ("VGPO: token factor psi = clamp(1 + w_hat - mean, 0.1, 2) from last-layer cosine to the mean image "
                   "vector (micro-batch min-max, late-token compensation 0.3 on the top 20% of the tail), trajectory "
                   "factor alpha in [0.9, 2] from sum(w_hat); loss dapo, clip 0.2 / 0.28, dual clip 3, dynamic "
                   "sampling on accuracy, no overlong filtering.")
    preset = {"loss_type": "dapo", "epsilon_high": 0.28, "delta": 3.0, "dynamic_sampling": True,
              "dynamic_sampling_filter": "accuracy", "mask_truncated_completions": False, "vision_layers": [-1]}
    needs_visual_scores = True
    metric_prefix = "vgpo"
    weighting = "vgpo"

    def configure(self, args: Any) -> None:
        args.check_vgpo()
        if args.vision_score_type not in ("cosine", args.vgpo_similarity):
            raise ValueError(f"method vgpo sets its score from vgpo_similarity={args.vgpo_similarity!r}, but "
                             f"vision_score_type={args.vision_score_type!r} was also given: set vgpo_similarity only.")
        args.vision_score_type = args.vgpo_similarity

    def _terms(self, ctx: LossContext) -> dict[str, torch.Tensor]:
        if "vgpo" not in ctx.cache:
            scores = ctx.scores.detach()
            finite = torch.where(ctx.mask, scores, 0.0).isfinite().all(dim=1)
            ctx.cache["vgpo"] = vgpo_terms(scores, ctx.mask, finite & ~ctx.no_image, ctx.args)
            ctx.cache["vgpo_fallback"] = ~finite | ctx.no_image
        return ctx.cache["vgpo"]

    def token_weights(self, ctx: LossContext) -> TokenWeights | None:
        if not ctx.args.vgpo_intra:
            return None
        psi = self._terms(ctx)["psi"]
        return TokenWeights(psi * ctx.mask, psi, ctx.cache["vgpo_fallback"])

    def advantage_scale(self, ctx: LossContext) -> torch.Tensor | None:
        return self._terms(ctx)["alpha"] if ctx.args.vgpo_inter else None

    def metrics(self, ctx: LossContext) -> dict[str, torch.Tensor]:
        terms, mask = self._terms(ctx), ctx.mask
        valid = mask.sum().clamp(min=1)
        psi = terms["psi"]
        return {"vgpo/focus_mean": (terms["focus"] * mask).sum() / valid,
                "vgpo/gate_rate": (terms["gate"] & mask).sum() / valid,
                "vgpo/psi_min": torch.where(mask, psi, float("inf")).min(),
                "vgpo/psi_max": torch.where(mask, psi, float("-inf")).max(),
                "vgpo/alpha_min": terms["alpha"].min(), "vgpo/alpha_max": terms["alpha"].max()}

    def token_views(self, ctx: LossContext) -> dict[str, torch.Tensor]:
        terms = self._terms(ctx)
        return {"vgpo_focus": terms["focus"], "vgpo_psi": terms["psi"] * ctx.mask, "vgpo_gate": terms["gate"]}
