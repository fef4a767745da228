"""VPPO (ICLR 2026; public code huaixuheqing/VPPO-RL): train on the tokens that depend on the image.

Once per generation batch, with the rollout policy on both sides (as the public code): each token's
visual dependency ``k3(logp, logp_masked)`` clamped to [0, 10], and each response's mean dependency
min-max normalised over the generation batch (``s_hat``). Per micro-batch: only each response's top
``ceil(0.4 n)`` tokens by dependency keep their policy gradient, the advantage is scaled by
``0.9 + s_hat * 0.1 / (mean_microbatch(s_hat) + 1e-8)``, and an entropy penalty
``0.06 * sum(-logp) / window tokens`` (each micro-batch weighted by its share of the tokens) is added.

Loss shape of the public script: clip 0.2 / 0.28, EasyR1's dual clip 3.0, tokens weighted by their
share of the update batch: TRL ``loss_type dapo``, ``epsilon_high 0.28``, ``delta 3.0``. Online
filtering on accuracy, no overlong filtering.
"""

from __future__ import annotations

from typing import Any

import torch

from pepo.methods.base import LossContext, Method, RolloutContext
from pepo.perception import (low_var_kl, masked_mean, vppo_normalised_scores, vppo_scale_from_scores,
                             vppo_token_mask)

__all__ = ["VPPO"]


class VPPO(Method):
    name = "vppo"
    description = ("VPPO: per response only the top 40% tokens by visual dependency (rollout policy, masked vs real "
                   "image) train, advantages scaled by the response's dependency (min 0.9), entropy penalty 0.06; "
                   "loss dapo, clip 0.2 / 0.28, dual clip 3, dynamic sampling on accuracy, no overlong filtering.")
    preset = {"loss_type": "dapo", "epsilon_high": 0.28, "delta": 3.0, "dynamic_sampling": True,
              "dynamic_sampling_filter": "accuracy", "mask_truncated_completions": False,
              "perception_mask_stage": "pixels", "perception_mask_probability": 0.5, "perception_mask_scope": "rollout"}
    needs_masked_forward = True
    metric_prefix = "vppo"
    rollout_keys = ("vppo_dependency", "vppo_score")

    def configure(self, args: Any) -> None:
        if args.perception_masked_policy not in (None, "rollout"):
            raise ValueError("method vppo computes both sides of its dependency with the rollout policy, once per "
                             f"generation batch: perception_masked_policy={args.perception_masked_policy!r} is not "
                             "supported (leave it unset or `rollout`).")
        args.perception_masked_policy = "rollout"

    def rollout_columns(self, ctx: RolloutContext) -> dict[str, torch.Tensor]:
        dependency = low_var_kl(ctx.logps.float(), ctx.masked_logps.float()).clamp(0.0, ctx.args.vppo_dependency_max)
        dependency = dependency * ctx.mask  # padding: 0 (never selected anyway)
        return {"vppo_dependency": dependency, "vppo_score": vppo_normalised_scores(dependency, ctx.mask)}

    def token_mask(self, ctx: LossContext) -> torch.Tensor:
        if "vppo_mask" not in ctx.cache:
            ctx.cache["vppo_mask"] = vppo_token_mask(ctx.rollout["vppo_dependency"], ctx.mask, ctx.args.vppo_top_fraction)
        return ctx.cache["vppo_mask"]

    def advantage_scale(self, ctx: LossContext) -> torch.Tensor:
        if "vppo_scale" not in ctx.cache:
            ctx.cache["vppo_scale"] = vppo_scale_from_scores(ctx.rollout["vppo_score"], ctx.args.vppo_scale_min)
        return ctx.cache["vppo_scale"]

    def extra_loss(self, ctx: LossContext) -> torch.Tensor:
        # Public code: coef * token-mean(-logp) of the micro-batch, times its tokens over the window's tokens.
        return ctx.args.vppo_entropy_coef * (-ctx.logps * ctx.mask).sum() / ctx.token_normalizer

    def metrics(self, ctx: LossContext) -> dict[str, torch.Tensor]:
        selected = self.token_mask(ctx)
        scale = self.advantage_scale(ctx)
        return {"vppo/dependency_mean": masked_mean(ctx.rollout["vppo_dependency"], ctx.mask),
                "vppo/selected_fraction": selected.sum() / ctx.mask.sum().clamp(min=1),
                "vppo/scale_min": scale.min(), "vppo/scale_max": scale.max(),
                "vppo/entropy": masked_mean(-ctx.logps.detach(), ctx.mask)}

    def token_views(self, ctx: LossContext) -> dict[str, torch.Tensor]:
        return {"vppo_dependency": ctx.rollout["vppo_dependency"], "vppo_selected": self.token_mask(ctx)}
