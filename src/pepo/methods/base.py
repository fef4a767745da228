"""What a method is: a preset, what it needs, and pure functions of per-token tensors.

The trainer (:class:`pepo.trainer.PEPOTrainer`) knows no method by name. For every micro-batch it
builds one :class:`LossContext` right after TRL's policy forward and asks the method for

* :meth:`Method.token_weights` -> (B, C) multiplier of the advantages (logged as ``pepo/weight_p*``),
* :meth:`Method.token_mask` -> (B, C) bool, tokens that keep their policy gradient,
* :meth:`Method.advantage_scale` -> (B,) per-response factor,
* :meth:`Method.extra_loss` -> a scalar added to TRL's loss,
* :meth:`Method.metrics` -> scalars logged (mean over processes),
* :meth:`Method.token_views` -> (B, C) quantities the live token views show (view steps only),

and hands TRL the token-level advantages ``A_i * scale_i * weight_it * mask_it``. Methods that need
the policy with the image corrupted (``needs_masked_forward``) get, once per generation batch and
with the rollout policy, :meth:`Method.rollout_columns`: per-row tensors computed over the whole
generation batch that then travel with their rows (through TRL's shuffling and splitting, and the
resume state).

Every hook is a pure function of its context: no trainer state, no host syncs required.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

import torch

__all__ = ["Method", "LossContext", "RolloutContext", "TokenWeights"]


@dataclass
class TokenWeights:
    """A method's token weights for one micro-batch.

    Attributes:
        weights: (B, C) the weights themselves (what ``pepo/weight_p*`` logs), e.g. PEPO's w.
        multiplier: (B, C) what multiplies the advantages, e.g. PEPO's schedule 1 - p + p * w.
        fallback: (B,) bool rows that fell back to uniform weights (``pepo/uniform_fallback_rows``), or None.
    """

    weights: torch.Tensor
    multiplier: torch.Tensor
    fallback: torch.Tensor | None = None


@dataclass
class RolloutContext:
    """One generation batch (this process's rows), right after generation, before any update.

    Attributes:
        args: the resolved :class:`pepo.trainer.PEPOConfig`.
        mask: (N, C) bool valid completion tokens.
        advantages: (N,) sequence advantages.
        logps: (N, C) float32 log-probs of the sampled tokens under the rollout policy, real image.
        masked_logps: (N, C) float32 log-probs under the rollout policy with each row's image corrupted.
    """

    args: Any
    mask: torch.Tensor
    advantages: torch.Tensor
    logps: torch.Tensor
    masked_logps: torch.Tensor


@dataclass
class LossContext:
    """One micro-batch, right after TRL's policy forward.

    Attributes:
        args: the resolved :class:`pepo.trainer.PEPOConfig`.
        training: True in training, False in evaluation.
        progress: p = global_step / max_steps in [0, 1].
        mask: (B, C) bool valid completion tokens (completion and tool masks).
        advantages: (B,) sequence advantages as TRL computed them.
        logps: (B, C) log-probs of the sampled tokens under the current policy (carries the gradient).
        entropies: (B, C) entropy of the distribution that produced each token (detached unless
            ``detach_weights`` is False), or None.
        scores: (B, C) float32 visual-similarity scores, or None when nobody asked for them.
        no_image: (B,) bool rows without an image token.
        masked_logps: (B, C) log-probs with the image corrupted (rollout policy by default), or None.
        old_logps: (B, C) log-probs of the policy that sampled the tokens (TRL's ``old_per_token_logps``), or
            None when TRL has none (on-policy: the ratio is 1, TRL uses ``logps.detach()``).
        rollout: the per-row columns of :meth:`Method.rollout_columns` for these rows.
        accumulation: micro-batches per optimizer step (1 in evaluation).
        token_normalizer: TRL's ``dapo`` normaliser of this micro-batch: the tokens of one
            accumulation window per process (``num_items_in_batch / processes * accumulation /
            steps_per_generation`` in training), so ``sum(x * mask) / token_normalizer`` weighs a
            micro-batch by its share of the window's tokens.
        cache: scratch space shared by the hooks of one micro-batch (e.g. a dependency computed once).
    """

    args: Any
    training: bool
    progress: float
    mask: torch.Tensor
    advantages: torch.Tensor
    logps: torch.Tensor
    entropies: torch.Tensor | None
    scores: torch.Tensor | None
    no_image: torch.Tensor
    masked_logps: torch.Tensor | None = None
    old_logps: torch.Tensor | None = None
    rollout: Mapping[str, torch.Tensor] = field(default_factory=dict)
    accumulation: float = 1.0
    token_normalizer: torch.Tensor | float = 1.0
    cache: dict[str, Any] = field(default_factory=dict)


class Method:
    """Base class of a registered method; the defaults make it GRPO (TRL's loss, untouched).

    Subclass it, set the class attributes, override the hooks you need, and register it with
    :func:`pepo.methods.register` (or name it ``--method my_module:MyMethod``).

    Class attributes:
        name: the ``--method`` value.
        description: one line for ``pepo train --help`` and the README's method table.
        preset: config field -> value, applied to fields left unset (None); an explicit value wins.
        needs_visual_scores: the trainer captures per-layer visual similarity (``ctx.scores``).
        needs_entropies: the method reads ``ctx.entropies`` (TRL computes them in every forward).
        needs_masked_forward: the trainer runs the policy with each row's image corrupted and
            draws a mask seed per row (``perception_mask_*`` options).
        metric_prefix: prefix of :meth:`metrics` keys and of ``<prefix>/masked_forward_ms``.
        weighting: label of the token weighting (``PEPOConfig.token_weighting``), None if none.
        rollout_keys: the keys :meth:`rollout_columns` returns (they then appear in ``ctx.rollout``);
            non-empty also means the trainer computes ``RolloutContext.logps`` (real image, rollout policy).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    preset: ClassVar[Mapping[str, Any]] = {}
    needs_visual_scores: ClassVar[bool] = False
    needs_entropies: ClassVar[bool] = False
    needs_masked_forward: ClassVar[bool] = False
    metric_prefix: ClassVar[str] = ""
    weighting: ClassVar[str | None] = None
    rollout_keys: ClassVar[tuple[str, ...]] = ()

    # --- configuration -----------------------------------------------------------------------------

    def configure(self, args: Any) -> None:
        """Validate / derive config fields after the preset was applied (raise ValueError naming the field)."""

    def masked_forward_on_rollout(self, args: Any) -> bool:
        """True: masked log-probs once per generation batch with the rollout policy; False: every
        micro-batch with the current policy (``ctx.masked_logps`` then carries a gradient if
        :meth:`masked_forward_with_grad`)."""
        return True

    def masked_forward_with_grad(self, args: Any) -> bool:
        """Whether the per-micro-batch masked forward keeps its graph (only when not on rollout)."""
        return False

    # --- once per generation batch -----------------------------------------------------------------

    def rollout_columns(self, ctx: RolloutContext) -> dict[str, torch.Tensor]:
        """Per-row tensors (first dimension N) computed over the whole generation batch."""
        return {}

    # --- every micro-batch -------------------------------------------------------------------------

    def token_weights(self, ctx: LossContext) -> TokenWeights | None:
        return None

    def token_mask(self, ctx: LossContext) -> torch.Tensor | None:
        return None

    def advantage_scale(self, ctx: LossContext) -> torch.Tensor | None:
        return None

    def extra_loss(self, ctx: LossContext) -> torch.Tensor | None:
        return None

    def metrics(self, ctx: LossContext) -> dict[str, torch.Tensor]:
        return {}

    def token_views(self, ctx: LossContext) -> dict[str, torch.Tensor]:
        """(B, C) per-token quantities ``--log_token_views_every`` shows for this method (called on view
        steps only; read them from what the other hooks computed, e.g. ``ctx.cache``)."""
        return {}

    def __repr__(self) -> str:
        return f"<method {self.name!r}: {type(self).__module__}.{type(self).__qualname__}>"
