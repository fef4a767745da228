"""PAPO and VPPO inside :class:`pepo.trainer.PEPOTrainer`: options, the masked-image forward, the loss hook.

* :class:`PerceptionArguments` holds the options (mixed into ``PEPOConfig``); ``None`` means "the
  method's default" (:data:`PERCEPTION_DEFAULTS`, from the public training scripts).
* :class:`PerceptionMixin` sits between ``PEPOTrainer`` and TRL's ``GRPOTrainer``:

  1. after TRL generates and scores a batch, every completion row gets a mask seed
     (``perception_seed``; one per prompt for PAPO, one per rollout for VPPO) and, for masking
     before resizing, its raw images (``perception_images``). Both travel with the row through
     TRL's shuffling and splitting and through DAPO dynamic sampling.
  2. in ``_compute_loss``, before the policy forward, one extra forward per micro-batch computes
     the policy's token log-probabilities with each row's image corrupted (``torch.no_grad`` unless
     ``papo_masked_grad``). It calls TRL's own forward helper, so every model family TRL supports
     gets its usual inputs, only ``pixel_values`` differ.
  3. right after the policy forward (same place PEPO builds its weights), PAPO computes its extra
     loss terms and VPPO rewrites the token-level advantages; PAPO's terms are added to TRL's loss.

PEPO itself never runs the extra forward (tested: one forward per micro-batch for PEPO, two here).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from trl import GRPOTrainer
from trl.trainer.utils import split_pixel_values_by_grid

from pepo.masking import FILLS, STAGES, block_mask_image, block_mask_pixel_values
from pepo.perception import low_var_kl, masked_mean, papo_terms, vppo_advantage_scale, vppo_token_mask

__all__ = ["PERCEPTION_DEFAULTS", "PerceptionArguments", "PerceptionMixin"]

#: method -> defaults of its public training scripts (issue 12; PAPO: MikeWangWZHL/PAPO, VPPO: huaixuheqing/VPPO-RL)
PERCEPTION_DEFAULTS: dict[str, dict[str, Any]] = {
    "papo_g": {"perception_mask_stage": "image", "perception_mask_probability": 0.6, "perception_mask_scope": "prompt",
               "papo_kl_coef": 0.02, "papo_entropy_coef": 0.05, "papo_masked_entropy_coef": 0.05},
    "papo_d": {"perception_mask_stage": "image", "perception_mask_probability": 0.6, "perception_mask_scope": "prompt",
               "papo_kl_coef": 0.01, "papo_entropy_coef": 0.03, "papo_masked_entropy_coef": 0.03},
    "vppo": {"perception_mask_stage": "pixels", "perception_mask_probability": 0.5,
             "perception_mask_scope": "rollout"},
}
_SCOPES = ("prompt", "rollout")
_PIXEL_KEYS = ("pixel_values", "image_grid_thw", "num_images", "pixel_attention_mask", "spatial_shapes",
               "num_tiles", "image_sizes", "image_position_ids")


@dataclass
class PerceptionArguments:
    """Options of the perception-aware baselines (methods ``papo_g``, ``papo_d``, ``vppo``)."""

    perception_mask_stage: str | None = field(
        default=None,
        metadata={"help": "Where the image is corrupted: `image` (raw image, before the processor resizes it; PAPO) "
                  "or `pixels` (the processor's pixel_values, after resizing; VPPO). Default: the method's."},
    )
    perception_mask_block_size: int = field(
        default=14, metadata={"help": "Side of the square masked blocks, in pixels of the image at that stage."}
    )
    perception_mask_probability: float | None = field(
        default=None, metadata={"help": "Probability that a block is masked (PAPO 0.6, VPPO 0.5). 0 = no masking."}
    )
    perception_mask_scope: str | None = field(
        default=None,
        metadata={"help": "`prompt`: one mask shared by a prompt's rollouts (PAPO); `rollout`: a new mask per "
                  "rollout (VPPO)."},
    )
    perception_mask_fill: str = field(
        default="black", metadata={"help": "Masked blocks become `black` (both public codes) or the image's `mean` colour."}
    )
    papo_kl_coef: float | None = field(
        default=None,
        metadata={"help": "PAPO: coefficient of the implicit perception loss (token-mean KL between the policy with the "
                  "image and with the masked image), subtracted from the loss (PAPO_G 0.02, PAPO_D 0.01)."},
    )
    papo_entropy_coef: float | None = field(
        default=None,
        metadata={"help": "PAPO double entropy: coefficient of the token-mean -log p with the image (0.05 7B PAPO_G "
                  "scripts, 0.03 PAPO_D)."},
    )
    papo_masked_entropy_coef: float | None = field(
        default=None, metadata={"help": "PAPO double entropy: coefficient of the token-mean -log p with the masked image."}
    )
    papo_masked_grad: bool = field(
        default=False,
        metadata={"help": "Run the masked-image forward with gradient (the paper's objective differentiates both "
                  "branches). Default False, as the public code: masked log-probs are computed without gradient."},
    )
    vppo_top_fraction: float = field(
        default=0.4, metadata={"help": "VPPO: fraction of each response's tokens (top by visual dependency) that train."}
    )
    vppo_scale_min: float = field(
        default=0.9,
        metadata={"help": "VPPO: advantage scale = scale_min + s_hat * (1 - scale_min) / mean(s_hat); 1 disables."},
    )
    vppo_entropy_coef: float = field(
        default=0.06, metadata={"help": "VPPO: entropy penalty coefficient on the token-mean -log p."}
    )
    vppo_dependency_max: float = field(
        default=10.0, metadata={"help": "VPPO: visual dependency is clamped to [0, this]."}
    )

    def resolve_perception(self, method: str) -> None:
        """Fill unset options with ``method``'s defaults and validate them (called by ``PEPOConfig``)."""
        for name, value in PERCEPTION_DEFAULTS.get(method, {}).items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if method not in PERCEPTION_DEFAULTS:
            return
        if self.perception_mask_stage not in STAGES:
            raise ValueError(f"perception_mask_stage={self.perception_mask_stage!r}: choose one of {list(STAGES)}.")
        if self.perception_mask_scope not in _SCOPES:
            raise ValueError(f"perception_mask_scope={self.perception_mask_scope!r}: choose one of {list(_SCOPES)}.")
        if self.perception_mask_fill not in FILLS:
            raise ValueError(f"perception_mask_fill={self.perception_mask_fill!r}: choose one of {list(FILLS)}.")
        if self.perception_mask_block_size < 1:
            raise ValueError(f"perception_mask_block_size must be >= 1, got {self.perception_mask_block_size}.")
        if not 0.0 <= self.perception_mask_probability <= 1.0:
            raise ValueError(f"perception_mask_probability must be in [0, 1], got {self.perception_mask_probability}.")
        if not 0.0 < self.vppo_top_fraction <= 1.0:
            raise ValueError(f"vppo_top_fraction must be in (0, 1], got {self.vppo_top_fraction}.")
        if not 0.0 <= self.vppo_scale_min <= 1.0:
            raise ValueError(f"vppo_scale_min must be in [0, 1], got {self.vppo_scale_min}.")


class PerceptionMixin:
    """The masked-image forward and PAPO / VPPO's loss changes; see the module docstring.

    Must come before ``GRPOTrainer`` in the bases of a trainer whose ``args`` mix in
    :class:`PerceptionArguments` and have a ``method``.
    """

    _perception_state: dict[str, Any] | None = None
    _perception_calls: tuple[int, int] = (-1, 0)  # (global step, generation calls in that step)

    @property
    def perception_method(self) -> str | None:
        """``papo_g``, ``papo_d``, ``vppo`` or None."""
        method = getattr(self.args, "method", None)
        return method if method in PERCEPTION_DEFAULTS else None

    # --- 1. seeds and raw images travel with every completion row ---------------------------------

    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        if self.perception_method is None:
            return out
        rows = out["prompt_ids"].shape[0]
        group = self.num_generations if self.model.training else self.num_generations_eval
        step = self.state.global_step
        calls = self._perception_calls[1] + 1 if self._perception_calls[0] == step else 0
        self._perception_calls = (step, calls)
        # Deterministic in (seed, step, call, process): a rerun or a resumed run draws the same masks.
        base = ((self.args.seed * 1_000_003 + step) * 1009 + calls) * 131 + self.accelerator.process_index
        gen = torch.Generator().manual_seed(base)
        if self.args.perception_mask_scope == "prompt":
            if rows % group:
                raise ValueError(f"perception_mask_scope=prompt needs whole groups: {rows} rows, {group} per prompt.")
            seeds = torch.randint(0, 2**62, (rows // group,), generator=gen).repeat_interleave(group)
        else:
            seeds = torch.randint(0, 2**62, (rows,), generator=gen)
        out["perception_seed"] = seeds.to(out["prompt_ids"].device)
        if self.args.perception_mask_stage == "image":
            if "images" in inputs[0]:
                images = [list(x.get("images") or []) for x in inputs]
            elif "image" in inputs[0]:
                images = [[x["image"]] if x.get("image") is not None else [] for x in inputs]
            else:
                images = [[] for _ in inputs]
            if len(images) != rows:
                raise RuntimeError(f"{len(images)} input rows for {rows} completions; cannot pair images with rows.")
            out["perception_images"] = images
        return out

    # --- 2. the masked-image forward -------------------------------------------------------------

    def _masked_pixel_values(self, inputs: dict[str, Any]) -> torch.Tensor:
        """This micro-batch's ``pixel_values`` with every row's image(s) corrupted by its own seed."""
        args = self.args
        pixels = inputs.get("pixel_values")
        if pixels is None:
            raise ValueError(f"method {self.perception_method} needs images: this batch has no pixel_values.")
        image_processor = getattr(self.processing_class, "image_processor", None)
        if image_processor is None:
            raise ValueError(f"method {self.perception_method} needs a processor with an image_processor.")
        seeds = inputs["perception_seed"].tolist()
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        split = split_pixel_values_by_grid({k: inputs[k] for k in _PIXEL_KEYS if inputs.get(k) is not None})
        per_row = split["pixel_values"]
        if args.perception_mask_stage == "pixels":
            grids = split.get("image_grid_thw") if isinstance(split.get("image_grid_thw"), list) else None
            masked = block_mask_pixel_values(per_row, gens, image_processor, args.perception_mask_block_size,
                                             args.perception_mask_probability, args.perception_mask_fill, grids)
        else:
            # Rollouts of one prompt share their seed (scope "prompt") and images: mask and process them once.
            done: dict[tuple, torch.Tensor] = {}
            masked = []
            for r, (row_images, gen, target) in enumerate(zip(inputs["perception_images"], gens, per_row)):
                key = (seeds[r], tuple(im.size for im in row_images), tuple(target.shape))
                if key not in done:
                    done[key] = self._reprocess(row_images, gen, target, image_processor,
                                                padded=not isinstance(per_row, list), row=r)
                masked.append(done[key])
            if not isinstance(per_row, list):
                masked = torch.stack(masked)
        return torch.cat(masked) if isinstance(masked, list) else masked

    def _reprocess(self, images, gen, target: torch.Tensor, image_processor, padded: bool, row: int) -> torch.Tensor:
        """Mask a row's raw images and run the image processor on them, in the layout of ``target``."""
        args = self.args
        corrupted = [block_mask_image(im, args.perception_mask_block_size, args.perception_mask_probability, gen,
                                      args.perception_mask_fill) for im in images]
        values = image_processor(images=[corrupted], return_tensors="pt")["pixel_values"]
        values = values.to(target.device, target.dtype)
        if padded:  # (N_max, C, H, W) per row, zero images after the row's own
            values = values.reshape(-1, *target.shape[1:])
            if values.shape[0] < target.shape[0]:
                values = torch.cat([values, values.new_zeros(target.shape[0] - values.shape[0], *target.shape[1:])])
        if values.numel() != target.numel():
            raise ValueError(
                f"row {row}: the image processor gave {tuple(values.shape)} pixel values for the masked image(s), the "
                f"batch holds {tuple(target.shape)}; this family's processor lays images out differently. Use "
                "--perception_mask_stage pixels (masking after resizing) for it."
            )
        return values.reshape(target.shape)

    def _masked_logps(self, model, inputs: dict[str, Any]) -> torch.Tensor:
        input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        with_grad = self.perception_method in ("papo_g", "papo_d") and self.args.papo_masked_grad
        with torch.set_grad_enabled(with_grad and torch.is_grad_enabled()):
            masked_pixels = self._masked_pixel_values(inputs)
            # TRL's helper (not the subclass wrappers): no PEPO hooks, no perception hook, same model inputs.
            logps, _, _ = GRPOTrainer._get_per_token_logps_and_entropies(
                self, model, input_ids, attention_mask, inputs["completion_ids"].size(1),
                pixel_values=masked_pixels, image_grid_thw=inputs.get("image_grid_thw"),
                num_images=inputs.get("num_images"), pixel_attention_mask=inputs.get("pixel_attention_mask"),
                spatial_shapes=inputs.get("spatial_shapes"), num_tiles=inputs.get("num_tiles"),
                image_sizes=inputs.get("image_sizes"), token_type_ids=inputs.get("token_type_ids"),
                mm_token_type_ids=inputs.get("mm_token_type_ids"), image_position_ids=inputs.get("image_position_ids"),
            )
        return logps

    def _compute_loss(self, model, inputs):
        if self.perception_method is None:
            return super()._compute_loss(model, inputs)
        start = time.perf_counter()
        masked = self._masked_logps(model, inputs)
        self._perception_state = {"inputs": inputs, "masked": masked, "seconds": time.perf_counter() - start}
        try:
            loss = super()._compute_loss(model, inputs)
            extra = self._perception_state.get("extra")
        finally:
            self._perception_state = None
        return loss if extra is None else loss + extra

    # --- 3. the loss changes, right after the policy forward ---------------------------------------

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, *args, **kwargs):
        state = self._perception_state
        out = super()._get_per_token_logps_and_entropies(model, input_ids, attention_mask, logits_to_keep,
                                                         *args, **kwargs)
        if state is not None and "done" not in state:  # the first forward inside _compute_loss is the policy's
            state["done"] = True
            self._apply_perception(state, out[0])
        return out

    def _apply_perception(self, state: dict[str, Any], logps: torch.Tensor) -> None:
        args, inputs, masked = self.args, state["inputs"], state["masked"]
        mode = "train" if self.model.training else "eval"
        accumulation = self.current_gradient_accumulation_steps if mode == "train" else 1.0
        mask = inputs["completion_mask"].bool()
        if "tool_mask" in inputs:
            mask = mask & inputs["tool_mask"].bool()
        if self.perception_method in ("papo_g", "papo_d"):
            extra, stats = papo_terms(logps, masked, mask, args.papo_kl_coef, args.papo_entropy_coef,
                                      args.papo_masked_entropy_coef)
            # Same convention as TRL's entropy bonus: a micro-batch token mean, scaled for accumulation only.
            state["extra"] = extra / accumulation
            if self._token_view is not None:  # a token-view step (pepo.token_view_capture)
                self._record_token_view("papo_kl", low_var_kl(logps.detach(), masked.detach()))
            names = {"papo/kl_prcp": stats["kl"], "papo/entropy": stats["entropy"],
                     "papo/masked_entropy": stats["masked_entropy"]}
        else:
            old = inputs.get("old_per_token_logps")
            original = (logps if old is None else old).detach()
            dependency = low_var_kl(original, masked.detach()).clamp(0.0, args.vppo_dependency_max)
            selected = vppo_token_mask(dependency, mask, args.vppo_top_fraction)
            scale = vppo_advantage_scale(dependency, mask, args.vppo_scale_min)
            self._record_token_view("vppo_dependency", dependency)  # token views only (a no-op on other steps)
            self._record_token_view("vppo_selected", selected)
            advantages = inputs["advantages"]
            if advantages.dim() == 1:
                advantages = advantages.unsqueeze(1)
            inputs["advantages"] = advantages * scale.unsqueeze(1).to(advantages.dtype) * selected.to(advantages.dtype)
            entropy = masked_mean(-logps, mask)
            state["extra"] = args.vppo_entropy_coef * entropy / accumulation
            valid = mask.sum().clamp(min=1)
            names = {"vppo/dependency_mean": masked_mean(dependency, mask),
                     "vppo/selected_fraction": selected.sum() / valid,
                     "vppo/scale_min": scale.min(), "vppo/scale_max": scale.max(),
                     "vppo/entropy": entropy.detach()}
        prefix = "papo" if self.perception_method != "vppo" else "vppo"
        values = torch.stack([v.detach().float() for v in names.values()]
                             + [torch.tensor(state["seconds"] * 1000.0, device=logps.device)])
        values = self.accelerator.reduce(values, reduction="mean").tolist()
        for name, value in zip([*names, f"{prefix}/masked_forward_ms"], values):
            self._metrics[mode][name].append(value)
