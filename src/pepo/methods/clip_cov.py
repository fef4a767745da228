"""Clip-Cov (Cui et al., 2025, "The Entropy Mechanism of Reinforcement Learning for Reasoning Language Models";
public code PRIME-RL/Entropy-Mechanism-of-RL): detach the gradient of a few high-covariance tokens.

Entropy collapses through tokens whose log-probability and advantage move together. Per micro-batch,
over its valid tokens (as the public code's ``compute_policy_loss_clip_cov``):

* ``cov_it = (A_i - mean_tok(A)) * (log pi_it - mean_tok(log pi))`` (token means over the micro-batch,
  A_i the sequence advantage broadcast to its tokens, log pi the current policy's sampled-token log-prob);
* candidates: valid tokens with ``lb < cov_it < ub`` (1 and 5) that the PPO clip does not already clip
  (``-A * clip(r, 1 - eps_low, 1 + eps_high) > -A * r``, r = pi / pi_old);
* ``max(int(ratio * n_valid), 1)`` of them (ratio 2e-4), drawn uniformly without replacement, lose
  their policy gradient (their loss is 0, they still count in the token mean).

Loss shape of the public 7B script (``recipe/dapo/7b_clip_cov.sh``): clip 1 / 1 (a ratio range [0, 2]),
no dual clip, verl's ``token-mean`` per micro-batch weighted by its row share (TRL ``bnpo`` with
equal micro-batches), no KL, no entropy bonus, DAPO group filtering on accuracy, no overlong
penalty: TRL ``loss_type bnpo``, ``epsilon_high 1.0`` (and ``--epsilon 1.0``: a preset only fills fields
left unset and TRL's ``epsilon`` always has a value), ``dynamic_sampling_filter accuracy``.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

import torch

from pepo.methods.base import LossContext, Method

__all__ = ["ClipCov", "ClipCovArguments", "clip_cov_covariance", "clip_cov_candidates", "clip_cov_select"]


@dataclass
class ClipCovArguments:
    """Options of method ``clip_cov`` (mixed into ``PEPOConfig``); defaults are the public ``7b_clip_cov.sh``."""

    clip_cov_ratio: float = field(
        default=2e-4,
        metadata={"help": "Clip-Cov: fraction of a micro-batch's valid tokens whose gradient is detached (at least 1)."},
    )
    clip_cov_lb: float = field(default=1.0, metadata={"help": "Clip-Cov: candidates have covariance > this."})
    clip_cov_ub: float = field(default=5.0, metadata={"help": "Clip-Cov: candidates have covariance < this."})

    def check_clip_cov(self) -> None:
        """Validate the Clip-Cov options (ValueError naming the field)."""
        if not 0.0 <= self.clip_cov_ratio <= 1.0:
            raise ValueError(f"clip_cov_ratio must be in [0, 1], got {self.clip_cov_ratio}.")
        if not self.clip_cov_lb < self.clip_cov_ub:
            raise ValueError(f"clip_cov_lb must be < clip_cov_ub, got {self.clip_cov_lb} / {self.clip_cov_ub}.")


def clip_cov_covariance(logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, C) float32 centred cross-product ``(A_i - mean(A)) * (logp_it - mean(logp))``, token means over
    ``mask``; 0 on padding.

    Args:
        logps: (B, C) sampled-token log-probs (nats).
        advantages: (B,) sequence advantages (or (B, C) token advantages).
        mask: (B, C) bool valid tokens.
    """
    logps = logps.detach().float()
    adv = advantages.detach().float()
    adv = adv[:, None].expand_as(logps) if adv.dim() == 1 else adv
    count = mask.sum().clamp(min=1)
    mean_adv = (adv * mask).sum() / count
    mean_logp = (logps * mask).sum() / count
    return torch.where(mask, (adv - mean_adv) * (logps - mean_logp), 0.0)


def clip_cov_candidates(cov: torch.Tensor, mask: torch.Tensor, advantages: torch.Tensor, logps: torch.Tensor,
                        old_logps: torch.Tensor | None, epsilon_low: float, epsilon_high: float,
                        lb: float, ub: float) -> torch.Tensor:
    """(B, C) bool tokens eligible for detaching: valid, ``lb < cov < ub``, not already clipped by the PPO clip."""
    candidates = mask & (cov > lb) & (cov < ub)
    if old_logps is None:  # on-policy: r = 1 is never clipped
        return candidates
    adv = advantages.detach().float()
    adv = adv[:, None].expand_as(cov) if adv.dim() == 1 else adv
    ratio = torch.exp(logps.detach().float() - old_logps.float())
    clipped = -adv * ratio.clamp(1.0 - epsilon_low, 1.0 + epsilon_high) > -adv * ratio
    return candidates & ~clipped


def clip_cov_select(candidates: torch.Tensor, mask: torch.Tensor, ratio: float, seed: int) -> torch.Tensor:
    """(B, C) bool tokens to detach: ``max(int(ratio * n_valid), 1)`` candidates drawn without replacement by a
    generator seeded with ``seed`` (all candidates when there are fewer). One host read (the candidate count)."""
    flat = candidates.flatten().nonzero().squeeze(1)
    chosen = torch.zeros(candidates.numel(), dtype=torch.bool, device=candidates.device)
    if flat.numel():
        count = max(int(ratio * int(mask.sum())), 1)
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(flat.numel(), generator=generator)[:count].to(flat.device)
        chosen[flat[order]] = True
    return chosen.view_as(candidates)


class ClipCov(Method):
    name = "clip_cov"
    description = ("Clip-Cov: per micro-batch, max(1, int(2e-4 n)) tokens drawn among those with covariance "
                   "(A - mean A)(log p - mean log p) in (1, 5) lose their gradient; loss bnpo, clip high 1 (pass "
                   "--epsilon 1 for the public clip 1 / 1), no dual clip, dynamic sampling on accuracy.")
    preset = {"loss_type": "bnpo", "epsilon_high": 1.0, "dynamic_sampling": True, "dynamic_sampling_filter": "accuracy",
              "mask_truncated_completions": False}
    metric_prefix = "clip_cov"

    def configure(self, args: Any) -> None:
        args.check_clip_cov()

    def _terms(self, ctx: LossContext) -> dict[str, torch.Tensor]:
        if "clip_cov" not in ctx.cache:
            args = ctx.args
            cov = clip_cov_covariance(ctx.logps, ctx.advantages, ctx.mask)
            eps_high = args.epsilon if args.epsilon_high is None else args.epsilon_high
            candidates = clip_cov_candidates(cov, ctx.mask, ctx.advantages, ctx.logps, ctx.old_logps, args.epsilon,
                                             eps_high, args.clip_cov_lb, args.clip_cov_ub)
            # Deterministic in (seed, training progress, this micro-batch's tokens); the public code uses torch's
            # global RNG. The candidate positions enter the seed so micro-batches of one step draw differently.
            positions = candidates.flatten().nonzero().squeeze(1)
            key = f"{args.seed}:{ctx.progress:.9f}:{int(ctx.mask.sum())}:{int(positions.sum())}:{positions.numel()}"
            detached = clip_cov_select(candidates, ctx.mask, args.clip_cov_ratio, zlib.crc32(key.encode()))
            ctx.cache["clip_cov"] = {"cov": cov, "candidates": candidates, "detached": detached}
        return ctx.cache["clip_cov"]

    def token_mask(self, ctx: LossContext) -> torch.Tensor:
        return ctx.mask & ~self._terms(ctx)["detached"]

    def metrics(self, ctx: LossContext) -> dict[str, torch.Tensor]:
        terms = self._terms(ctx)
        valid = ctx.mask.sum().clamp(min=1)
        return {"clip_cov/detached_fraction": terms["detached"].sum() / valid,
                "clip_cov/candidate_fraction": terms["candidates"].sum() / valid,
                "clip_cov/cov_max": torch.where(ctx.mask, terms["cov"], float("-inf")).max()}

    def token_views(self, ctx: LossContext) -> dict[str, torch.Tensor]:
        terms = self._terms(ctx)
        return {"clip_cov_cov": terms["cov"], "clip_cov_detached": terms["detached"]}
