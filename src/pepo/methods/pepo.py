"""PEPO (arXiv 2603.22847) and its two ablations: token weights from visual similarity and entropy.

w = n * softmax(VS * (1 + alpha * tanh(centred joint score)) / tau) per response (:mod:`pepo.weights`),
applied through the schedule 1 - p + p * w on the clipped surrogate (the KL term stays unweighted).
"""

from __future__ import annotations

import torch

from pepo.methods.base import LossContext, Method, TokenWeights
from pepo.methods.dapo import DAPO_PRESET
from pepo.weights import (exploration_only_weights, fallback_rows, pepo_token_weights, perception_only_weights,
                          scheduled_weights)

__all__ = ["PEPO", "PEPO_G", "PEPO_D", "PerceptionOnly", "ExplorationOnly"]


class PEPO(Method):
    name = "pepo"
    description = ("PEPO: perception prior gated by entropy, w = n * softmax(VS * (1 + alpha * tanh(centred)) / tau), "
                   "on whatever loss_type is configured.")
    needs_visual_scores = True
    needs_entropies = True
    weighting = "pepo"

    def token_weights(self, ctx: LossContext) -> TokenWeights:
        args = ctx.args
        fallback = fallback_rows(ctx.scores, ctx.entropies, ctx.mask, no_image_rows=ctx.no_image)
        weights = pepo_token_weights(ctx.scores, ctx.entropies, ctx.mask, args.gate_alpha, args.gate_temperature,
                                     no_image_rows=ctx.no_image)
        return TokenWeights(weights, scheduled_weights(weights, ctx.progress), fallback)


class PEPO_G(PEPO):
    name = "pepo_g"
    description = "PEPO_G: PEPO on GRPO (loss_type grpo unless set explicitly)."
    preset = {"loss_type": "grpo"}


class PEPO_D(PEPO):
    name = "pepo_d"
    description = "PEPO_D: PEPO on the DAPO preset (explicit values win, e.g. loss_type bnpo as in the release)."
    preset = DAPO_PRESET


class PerceptionOnly(Method):
    name = "perception_only"
    description = "Ablation: gate off (alpha = 0), w = n * softmax(VS / tau)."
    needs_visual_scores = True
    weighting = "perception_only"

    def token_weights(self, ctx: LossContext) -> TokenWeights:
        fallback = fallback_rows(ctx.scores, torch.zeros_like(ctx.scores), ctx.mask, no_image_rows=ctx.no_image)
        weights = perception_only_weights(ctx.scores, ctx.mask, ctx.args.gate_temperature, no_image_rows=ctx.no_image)
        return TokenWeights(weights, scheduled_weights(weights, ctx.progress), fallback)


class ExplorationOnly(Method):
    name = "exploration_only"
    description = "Ablation: entropy only, w = n * softmax(min-max-normalised entropy / tau)."
    needs_entropies = True
    weighting = "exploration_only"

    def token_weights(self, ctx: LossContext) -> TokenWeights:
        fallback = fallback_rows(torch.zeros_like(ctx.entropies), ctx.entropies, ctx.mask)
        weights = exploration_only_weights(ctx.entropies, ctx.mask, ctx.args.gate_temperature)
        return TokenWeights(weights, scheduled_weights(weights, ctx.progress), fallback)
