"""DAPO dynamic sampling: keep only groups whose rewards differ, and sample more until the batch is full.

A group whose G completions all received the same reward has advantage 0 for every completion:
it costs a forward and backward and teaches nothing. DAPO drops such groups and keeps generating
(new prompts) until the batch holds as many informative groups as it should, up to a cap.

This module holds the batch surgery on TRL's generation output (a dict of per-completion tensors):
:func:`informative_groups` finds the groups to keep, :func:`concat_batches` merges the outputs of
several generation rounds (padding prompts on the left and completions on the right) and
:func:`select_rows` keeps a subset of completions. The trainer drives the loop.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from trl.trainer.utils import split_pixel_values_by_grid, unsplit_pixel_values_by_grid

__all__ = ["informative_groups", "concat_batches", "select_rows"]

#: (B, P) tensors aligned with the left-padded prompt, and their padding values (pad id filled in later).
_PROMPT_KEYS = {"prompt_ids": None, "prompt_mask": 0, "mm_token_type_ids": 0, "token_type_ids": 0}
#: (B, T) tensors aligned with the right-padded completion, and their padding values.
_COMPLETION_KEYS = {
    "completion_ids": None,
    "completion_mask": 0,
    "old_per_token_logps": 0.0,
    "ref_per_token_logps": 0.0,
    "sampling_per_token_logps": 0.0,
    "importance_sampling_ratio": 1.0,
    "tool_mask": 0,
}
#: one entry per completion, concatenated as they are
_ROW_KEYS = ("advantages", "perception_seed", "perception_images")  # the last two: PAPO / VPPO masks
#: per-image / per-sample pixel data, handled by TRL's split/unsplit helpers
_PIXEL_KEYS = ("pixel_values", "image_grid_thw", "pixel_attention_mask", "image_sizes", "image_position_ids",
               "spatial_shapes", "num_images", "num_tiles")
#: recomputed by the caller after selection
_DERIVED_KEYS = ("num_items_in_batch",)


def informative_groups(advantages: torch.Tensor, num_generations: int) -> torch.Tensor:
    """Which groups of ``num_generations`` consecutive completions have non-zero reward variance.

    With TRL's ``sum_then_normalize`` aggregation, A = (r - group mean) / scale, so every advantage of
    a group is exactly 0 iff all its rewards are equal.

    Args:
        advantages: (N,) advantages, N a multiple of ``num_generations``.

    Returns:
        (N / num_generations,) bool.
    """
    if advantages.dim() != 1 or advantages.numel() % num_generations:
        raise ValueError(
            f"advantages must be 1-D with a multiple of num_generations={num_generations} entries, "
            f"got shape {tuple(advantages.shape)}"
        )
    return advantages.view(-1, num_generations).abs().amax(dim=1) > 0


def _check_keys(batch: dict[str, Any]) -> None:
    known = set(_PROMPT_KEYS) | set(_COMPLETION_KEYS) | set(_ROW_KEYS) | set(_PIXEL_KEYS) | set(_DERIVED_KEYS)
    unknown = sorted(set(batch) - known)
    if unknown:
        raise NotImplementedError(
            f"dynamic sampling cannot merge generation outputs with key(s) {unknown}: this TRL version or model "
            "adds fields pepo does not know how to pad. Disable dynamic_sampling or extend pepo.dynamic_sampling."
        )


def _pad(tensors: list[torch.Tensor], value: float, left: bool) -> torch.Tensor:
    width = max(t.shape[1] for t in tensors)
    out = []
    for t in tensors:
        missing = width - t.shape[1]
        if missing:
            fill = torch.full((t.shape[0], missing, *t.shape[2:]), value, dtype=t.dtype, device=t.device)
            t = torch.cat([fill, t] if left else [t, fill], dim=1)
        out.append(t)
    return torch.cat(out, dim=0)


def concat_batches(batches: Sequence[dict[str, Any]], pad_token_id: int) -> dict[str, Any]:
    """Merge generation outputs row-wise: prompts left-padded, completions right-padded to a common width.

    Pixel tensors stay per sample: they are split per sample with TRL's helper, concatenated, and
    merged back, so ``select_rows`` can pick samples afterwards. ``num_items_in_batch`` is dropped
    (the caller recomputes it for the final selection).
    """
    for batch in batches:
        _check_keys(batch)
    if len(batches) == 1:
        merged = dict(batches[0])
        merged.pop("num_items_in_batch", None)
        return merged
    split = [split_pixel_values_by_grid(dict(b)) for b in batches]
    merged: dict[str, Any] = {}
    for key in split[0]:
        values = [b[key] for b in split]
        if key in _DERIVED_KEYS:
            continue
        if any(v is None for v in values):
            merged[key] = None
        elif key in _PROMPT_KEYS or key in _COMPLETION_KEYS:
            table = _PROMPT_KEYS if key in _PROMPT_KEYS else _COMPLETION_KEYS
            value = pad_token_id if table[key] is None else table[key]
            merged[key] = _pad(values, value, left=key in _PROMPT_KEYS)
        elif isinstance(values[0], list):
            merged[key] = [item for v in values for item in v]
        elif isinstance(values[0], torch.Tensor):
            merged[key] = torch.cat(values, dim=0)
        else:
            raise NotImplementedError(f"dynamic sampling cannot merge key {key!r} of type {type(values[0]).__name__}")
    return unsplit_pixel_values_by_grid(merged)


def select_rows(batch: dict[str, Any], rows: Sequence[int]) -> dict[str, Any]:
    """Keep completions ``rows`` (in that order) of a merged generation batch, pixel data included."""
    batch = split_pixel_values_by_grid(dict(batch))
    index = torch.as_tensor(list(rows), dtype=torch.long)
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if value is None:
            out[key] = None
        elif isinstance(value, torch.Tensor) and value.ndim >= 1:
            out[key] = value[index.to(value.device)]
        elif isinstance(value, list):
            out[key] = [value[i] for i in rows]
        else:
            out[key] = value
    return unsplit_pixel_values_by_grid(out)
