"""The masked-image forward of the perception-aware methods (PAPO, VPPO, yours) inside ``PEPOTrainer``.

* :class:`PerceptionArguments` holds the options (mixed into ``PEPOConfig``); ``None`` means "the
  method's preset" (:mod:`pepo.methods.papo`, :mod:`pepo.methods.vppo`: the public scripts' values).
* :class:`PerceptionMixin` sits between ``PEPOTrainer`` and TRL's ``GRPOTrainer``, for every method
  that declares ``needs_masked_forward``:

  1. after TRL generates and scores a batch, every completion row gets a mask seed
     (``perception_seed``; one per prompt or one per rollout, ``perception_mask_scope``) and, for
     masking before resizing, its raw images (``perception_images``). Seeds are deterministic in
     (seed, global step, generation call of that step, process). They travel with the row through
     TRL's shuffling and splitting and through DAPO dynamic sampling.
  2. once the generation batch is final (after dynamic sampling), before any update, one no-grad
     forward per ``per_device_train_batch_size`` rows computes the *rollout* policy's log-probs with
     each row's image corrupted (``masked_per_token_logps``), and for methods with ``rollout_keys``
     also with the real image, in the same chunks (so that no masking gives exactly equal sides);
     then the method's ``rollout_columns`` (e.g. VPPO's dependency and normalised scores over the
     generation batch) are added as per-row columns. This is what both public codes do (once per
     rollout batch, reused for every update). ``perception_masked_policy current`` (PAPO only)
     recomputes the masked log-probs every micro-batch with the current policy instead.
  3. the methods' loss changes are pure functions of those columns (:mod:`pepo.methods`).

It calls TRL's own forward helper, so every model family TRL supports gets its usual inputs, only
``pixel_values`` differ. PEPO itself never runs the extra forward (tested).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from trl import GRPOTrainer
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import split_pixel_values_by_grid

from pepo.dynamic_sampling import select_rows
from pepo.masking import FILLS, STAGES, block_mask_image, block_mask_pixel_values
from pepo.methods import Method, RolloutContext, builtin_methods, get_method

__all__ = ["PERCEPTION_DEFAULTS", "PerceptionArguments", "PerceptionMixin"]

_SCOPES = ("prompt", "rollout")
#: masking options of a method with a masked forward whose preset does not set them (VPPO's choices)
_MASK_FALLBACKS = {"perception_mask_stage": "pixels", "perception_mask_probability": 0.5,
                   "perception_mask_scope": "rollout"}
_MASK_FIELDS = ("perception_mask_stage", "perception_mask_probability", "perception_mask_scope", "papo_kl_coef",
                "papo_entropy_coef", "papo_masked_entropy_coef")
#: built-in method -> its masking / PAPO options (from the registry; benchmarks switch methods in place with these)
PERCEPTION_DEFAULTS: dict[str, dict[str, Any]] = {
    name: {k: v for k, v in m.preset.items() if k in _MASK_FIELDS}
    for name, m in builtin_methods().items() if m.needs_masked_forward
}
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
    perception_masked_policy: str | None = field(
        default=None,
        metadata={"help": "Which policy gives the masked-image log-probs: `rollout` (once per generation batch, before "
                  "any update, reused across iterations: both public codes) or `current` (recomputed every micro-batch; "
                  "PAPO only, needed by papo_masked_grad). Default: rollout, current with papo_masked_grad."},
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

    def check_perception(self) -> None:
        """Fill the masking options a method's preset left unset with the generic defaults
        (:data:`_MASK_FALLBACKS`) and validate them (called by ``PEPOConfig`` for methods with a masked forward)."""
        for name, value in _MASK_FALLBACKS.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
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
    """Mask seeds, the masked-image forward and the per-row rollout columns; see the module docstring.

    Must come before ``GRPOTrainer`` in the bases of a trainer whose ``args`` mix in
    :class:`PerceptionArguments` and have a ``method`` (a :mod:`pepo.methods` name).
    """

    _perception_calls: tuple[int, int] = (-1, 0)  # (global step, generation calls in that step)
    _resume_attributes = ("_perception_calls",)  # saved with checkpoints (PEPOTrainer._resume_state): seeds masks
    _columns_warned = False

    @property
    def perception_method(self) -> str | None:
        """The method's name when it needs the masked-image forward, else None."""
        method = get_method(self.args.method)
        return method.name if method.needs_masked_forward else None

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

    def _logps_with_pixels(self, model, inputs: dict[str, Any], pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, C) log-probs of the sampled tokens with ``pixel_values`` in place of the batch's."""
        input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        # TRL's helper (not the subclass wrappers): no PEPO hooks, same model inputs as the policy forward. TRL 1.16's
        # fused LM head returns float32 log-probs; `cast_lm_head_to_fp32` (TRL) also projects in float32.
        logps, _, _ = GRPOTrainer._get_per_token_logps_and_entropies(
            self, model, input_ids, attention_mask, inputs["completion_ids"].size(1),
            pixel_values=pixel_values, image_grid_thw=inputs.get("image_grid_thw"),
            num_images=inputs.get("num_images"), pixel_attention_mask=inputs.get("pixel_attention_mask"),
            spatial_shapes=inputs.get("spatial_shapes"), num_tiles=inputs.get("num_tiles"),
            image_sizes=inputs.get("image_sizes"), token_type_ids=inputs.get("token_type_ids"),
            mm_token_type_ids=inputs.get("mm_token_type_ids"), image_position_ids=inputs.get("image_position_ids"),
        )
        return logps

    def _masked_logps(self, model, inputs: dict[str, Any], with_grad: bool = False) -> torch.Tensor:
        """(B, C) log-probs of the sampled tokens with every row's image corrupted by its own seed."""
        with torch.set_grad_enabled(with_grad and torch.is_grad_enabled()):
            return self._logps_with_pixels(model, inputs, self._masked_pixel_values(inputs))

    # --- 3. once per generation batch, with the rollout policy -------------------------------------

    def _rollout_columns(self, model, method: Method, batch: dict[str, Any]) -> dict[str, Any]:
        """Masked log-probs (and the method's rollout columns) of every row of ``batch``, no gradient,
        in chunks of the per-device batch size."""
        rows = batch["completion_ids"].shape[0]
        size = self.args.per_device_train_batch_size if self.model.training else self.args.per_device_eval_batch_size
        real_too = bool(method.rollout_keys)
        masked, real = [], []
        with torch.no_grad(), disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
            for lo in range(0, rows, size):
                chunk = batch if rows <= size else select_rows(batch, range(lo, min(rows, lo + size)))
                masked.append(self._masked_logps(model, chunk))
                if real_too:
                    real.append(self._logps_with_pixels(model, chunk, chunk["pixel_values"]))
        out: dict[str, Any] = {"masked_per_token_logps": torch.cat(masked).float()}
        if real_too:
            mask = batch["completion_mask"].bool()
            if "tool_mask" in batch:
                mask = mask & batch["tool_mask"].bool()
            ctx = RolloutContext(args=self.args, mask=mask, advantages=batch["advantages"], logps=torch.cat(real).float(),
                                 masked_logps=out["masked_per_token_logps"])
            columns = method.rollout_columns(ctx)
            if set(columns) != set(method.rollout_keys):
                raise ValueError(f"method {method.name!r}: rollout_columns returned {sorted(columns)}, its rollout_keys "
                                 f"say {sorted(method.rollout_keys)}.")
            for key, value in columns.items():
                if not isinstance(value, torch.Tensor) or value.shape[0] != rows:
                    raise ValueError(f"method {method.name!r}: rollout column {key!r} must be a tensor with one entry "
                                     f"per row ({rows}).")
            out.update(columns)
        return out

    def _add_rollout_columns(self, method: Method, batch: dict[str, Any]) -> dict[str, Any]:
        """The generation batch with its rollout columns (for methods that run the masked forward on rollout)."""
        if not (method.needs_masked_forward and method.masked_forward_on_rollout(self.args)):
            return batch
        start = time.perf_counter()
        batch = dict(batch)
        batch.update(self._rollout_columns(self.model, method, batch))
        mode = "train" if self.model.training else "eval"
        self._metrics[mode][f"{method.metric_prefix}/masked_forward_ms"].append((time.perf_counter() - start) * 1000.0)
        return batch

    def _masked_logps_for_loss(self, model, method: Method, inputs: dict[str, Any]):
        """(masked log-probs of this micro-batch, seconds spent on them here or None); fills missing columns."""
        if method.masked_forward_on_rollout(self.args):
            if "masked_per_token_logps" not in inputs or any(k not in inputs for k in method.rollout_keys):
                # The batch was generated under another method (a method switched in place, as the benchmarks do):
                # compute the columns now, over this micro-batch, with the current policy.
                if not self._columns_warned:
                    warnings.warn(f"method {method.name!r}: this batch lacks its rollout columns; computing them over "
                                  "the micro-batch with the current policy.", stacklevel=2)
                    self._columns_warned = True
                inputs.update(self._rollout_columns(model, method, inputs))
            return inputs["masked_per_token_logps"], None
        start = time.perf_counter()
        masked = self._masked_logps(model, inputs, with_grad=method.masked_forward_with_grad(self.args))
        return masked, time.perf_counter() - start

    def _log_method_metrics(self, metrics: dict[str, Any]) -> None:
        """Log a method's scalars, averaged over processes (one all-reduce; every rank must call it)."""
        if not metrics:
            return
        mode = "train" if self.model.training else "eval"
        device = self.accelerator.device
        values = torch.stack([v.detach().float().to(device) if isinstance(v, torch.Tensor)
                              else torch.tensor(float(v), device=device) for v in metrics.values()])
        values = self.accelerator.reduce(values, reduction="mean").tolist()
        for name, value in zip(metrics, values):
            self._metrics[mode][name].append(value)
