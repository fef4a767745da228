"""PAPO (Wang et al., ICLR 2026; public code MikeWangWZHL/PAPO): implicit perception loss + double entropy.

Per micro-batch, with ``logp`` the current policy's log-probs (real image) and ``logp_masked`` the
log-probs with the image corrupted (rollout policy, once per generation batch, as the public code;
``perception_masked_policy current`` recomputes them every micro-batch):

    extra = -kl_coef * mean(k3(logp, logp_masked)) + entropy_coef * mean(-logp)
            + masked_entropy_coef * mean(-logp_masked)          (token means, / accumulation)

The loss shape of the public scripts is EasyR1's default: clip 0.2 / 0.3, dual clip 3.0, token mean
over the micro-batch; on TRL that is ``epsilon 0.2``, ``epsilon_high 0.3``, ``delta 3.0``, ``loss_type
bnpo`` (``delta`` equals dual clip exactly when ``delta >= 1 + epsilon_high``: tested).
"""

from __future__ import annotations

from typing import Any

import torch

from pepo.methods.base import LossContext, Method
from pepo.perception import low_var_kl, papo_terms

__all__ = ["PAPO_G", "PAPO_D", "PAPO_MASK"]

#: masking of the public scripts: 14-px black blocks with probability 0.6 on the raw image, one mask per prompt
PAPO_MASK: dict[str, Any] = {"perception_mask_stage": "image", "perception_mask_probability": 0.6,
                             "perception_mask_scope": "prompt"}
#: EasyR1's actor defaults, which the public PAPO scripts do not override (issue 19)
_EASYR1_LOSS: dict[str, Any] = {"loss_type": "bnpo", "delta": 3.0}
_POLICIES = ("rollout", "current")


class _PAPO(Method):
    needs_masked_forward = True
    metric_prefix = "papo"

    def configure(self, args: Any) -> None:
        if args.perception_masked_policy is None:
            args.perception_masked_policy = "current" if args.papo_masked_grad else "rollout"
        if args.perception_masked_policy not in _POLICIES:
            raise ValueError(f"perception_masked_policy={args.perception_masked_policy!r}: choose one of "
                             f"{list(_POLICIES)}.")
        if args.papo_masked_grad and args.perception_masked_policy != "current":
            raise ValueError("papo_masked_grad needs perception_masked_policy=current: a gradient through the masked "
                             "branch needs that branch recomputed with the current policy.")

    def masked_forward_on_rollout(self, args: Any) -> bool:
        # a gradient through the masked branch needs it recomputed (configure rejects an explicit `rollout` with it)
        return args.perception_masked_policy == "rollout" and not args.papo_masked_grad

    def masked_forward_with_grad(self, args: Any) -> bool:
        return bool(args.papo_masked_grad)

    def _terms(self, ctx: LossContext) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if "papo" not in ctx.cache:
            args = ctx.args
            ctx.cache["papo"] = papo_terms(ctx.logps, ctx.masked_logps, ctx.mask, args.papo_kl_coef,
                                           args.papo_entropy_coef, args.papo_masked_entropy_coef)
        return ctx.cache["papo"]

    def extra_loss(self, ctx: LossContext) -> torch.Tensor:
        # Same convention as TRL's entropy bonus: a micro-batch token mean, scaled for accumulation only.
        return self._terms(ctx)[0] / ctx.accumulation

    def metrics(self, ctx: LossContext) -> dict[str, torch.Tensor]:
        stats = self._terms(ctx)[1]
        return {"papo/kl_prcp": stats["kl"], "papo/entropy": stats["entropy"],
                "papo/masked_entropy": stats["masked_entropy"]}

    def token_views(self, ctx: LossContext) -> dict[str, torch.Tensor]:
        # the per-token form of papo/kl_prcp: k3 estimate of KL(policy || masked-image policy), >= 0
        return {"papo_kl": low_var_kl(ctx.logps.detach(), ctx.masked_logps.detach())}


class PAPO_G(_PAPO):
    name = "papo_g"
    description = ("PAPO_G: GRPO + implicit perception loss (KL to the masked-image policy, maximised, coef 0.02) + "
                   "double entropy (0.05 / 0.05); EasyR1's loss shape (bnpo, clip 0.2 / 0.3, dual clip 3). "
                   "Set beta 0.01 for the public scripts' KL to the reference.")
    preset = {**_EASYR1_LOSS, "epsilon_high": 0.3, **PAPO_MASK,
              "papo_kl_coef": 0.02, "papo_entropy_coef": 0.05, "papo_masked_entropy_coef": 0.05}


class PAPO_D(_PAPO):
    name = "papo_d"
    description = ("PAPO_D: DAPO-style (clip 0.2 / 0.28, dual clip 3, dynamic sampling on accuracy, no overlong "
                   "filtering) + implicit perception loss (coef 0.01) + double entropy (0.03 / 0.03).")
    preset = {**_EASYR1_LOSS, "epsilon_high": 0.28, "dynamic_sampling": True, "dynamic_sampling_filter": "accuracy",
              "mask_truncated_completions": False, **PAPO_MASK,
              "papo_kl_coef": 0.01, "papo_entropy_coef": 0.03, "papo_masked_entropy_coef": 0.03}
