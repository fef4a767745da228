"""DAPO dynamic sampling: keep only groups whose rewards differ, and sample more until the batch is full.

A group whose G completions all received the same reward has (up to float rounding) advantage 0 for
every completion: it costs a forward and backward and teaches nothing. DAPO drops such groups and keeps generating
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

__all__ = ["FILTERS", "filter_reward_columns", "informative_groups", "total_rewards", "concat_batches", "select_rows"]

#: `dynamic_sampling_filter` values besides a reward function's name
FILTERS = ("total", "accuracy")

#: (B, P) tensors aligned with the left-padded prompt, and their padding values (pad id filled in later).
_PROMPT_KEYS = {"prompt_ids": None, "prompt_mask": 0}
#: (B, P + C) tensors spanning prompt and completion (TRL extends them with zeros over the completion): the prompt
#: part is left-padded, the completion part right-padded, with these values.
_SEQUENCE_KEYS = {"mm_token_type_ids": 0, "token_type_ids": 0}
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
_ROW_KEYS = ("advantages", "perception_seed", "perception_images",  # the last two: PAPO / VPPO masks
             "pepo_view_reward", "pepo_view_images")  # pepo.token_view_capture
#: per-image / per-sample pixel data, handled by TRL's split/unsplit helpers
_PIXEL_KEYS = ("pixel_values", "image_grid_thw", "pixel_attention_mask", "image_sizes", "image_position_ids",
               "spatial_shapes", "num_images", "num_tiles")
#: recomputed by the caller after selection
_DERIVED_KEYS = ("num_items_in_batch",)


#: Two rewards of a group count as equal when |a - b| <= atol + rtol * max(|a|, |b|): torch.isclose's defaults,
#: which TRL 1.16 also uses for its `frac_reward_zero_std` metric. TRL applies them to the group's std, an
#: absolute 1e-8 that float32 rounding of the mean already exceeds for equal rewards of 1.3 in groups of 8
#: (std 1.3e-7); applied to the rewards themselves the tolerance scales with their size.
REWARD_RTOL = 1e-5
REWARD_ATOL = 1e-8


def informative_groups(rewards: torch.Tensor, num_generations: int) -> torch.Tensor:
    """Which groups of ``num_generations`` consecutive completions received rewards that are not all equal.

    Decided from the rewards, not the advantages: TRL's advantage (r - mean) / (std + 1e-4) of a group of
    equal but non-round rewards (0.1, 1.3, an IoU) is not 0 but ~1e-4 to 1e-3, because the float32 group
    mean is not exact. A group is uninformative when max - min of its rewards is within
    ``REWARD_ATOL + REWARD_RTOL * max |r|``. NaN rewards (completions no reward function could score, which
    TRL gives advantage 0) are ignored; a group with fewer than two scored completions is uninformative.

    Args:
        rewards: (N,) total reward of each completion (weighted sum over reward functions, NaN when
            unscorable), N a multiple of ``num_generations``, groups consecutive.

    Returns:
        (N / num_generations,) bool.
    """
    if rewards.dim() != 1 or rewards.numel() % num_generations:
        raise ValueError(
            f"rewards must be 1-D with a multiple of num_generations={num_generations} entries, "
            f"got shape {tuple(rewards.shape)}"
        )
    grouped = rewards.detach().double().view(-1, num_generations)
    scored = ~torch.isnan(grouped)
    highest = torch.where(scored, grouped, -torch.inf).amax(dim=1)
    lowest = torch.where(scored, grouped, torch.inf).amin(dim=1)
    scale = torch.maximum(highest.abs(), lowest.abs())
    spread = highest - lowest  # -inf when nothing in the group was scored
    return (scored.sum(dim=1) >= 2) & (spread > REWARD_ATOL + REWARD_RTOL * scale)


def total_rewards(rewards_per_func: torch.Tensor, reward_weights: torch.Tensor) -> torch.Tensor:
    """Each completion's total reward as TRL's ``sum_then_normalize`` forms it: the weighted sum over reward
    functions (NaN entries skipped), NaN where every function returned None.

    Args:
        rewards_per_func: (N, F) rewards, NaN where a function did not score a completion.
        reward_weights: (F,) weights.

    Returns:
        (N,) float.
    """
    total = (rewards_per_func * reward_weights.to(rewards_per_func.device).unsqueeze(0)).nansum(dim=1)
    return torch.where(torch.isnan(rewards_per_func).all(dim=1), torch.nan, total)


def filter_reward_columns(names: Sequence[str], filter_key: str) -> list[int]:
    """Indices of the reward functions whose weighted sum dynamic sampling compares within a group.

    ``total``: all of them (DAPO). ``accuracy``: all but the format rewards (names containing
    ``format``), which is what the public PAPO_D / VPPO scripts filter on (``filter_key=accuracy``:
    PAPO_D's reward is 0.9 accuracy + 0.1 format, VPPO's has no format term). Otherwise the one
    function of that name.

    Raises:
        ValueError: no reward function matches, naming the option and the functions.
    """
    names = list(names)
    if filter_key == "total":
        columns = list(range(len(names)))
    elif filter_key == "accuracy":
        columns = [i for i, name in enumerate(names) if "format" not in name.lower()]
    else:
        columns = [i for i, name in enumerate(names) if name == filter_key]
    if not columns:
        raise ValueError(f"dynamic_sampling_filter={filter_key!r} matches none of the reward functions {names}; set "
                         f"it to `total` or to one of those names.")
    return columns


def _check_keys(batch: dict[str, Any]) -> None:
    known = (set(_PROMPT_KEYS) | set(_SEQUENCE_KEYS) | set(_COMPLETION_KEYS) | set(_ROW_KEYS) | set(_PIXEL_KEYS)
             | set(_DERIVED_KEYS))
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
        elif key in _SEQUENCE_KEYS:
            widths = [b["prompt_ids"].shape[1] for b in split]
            prompt = _pad([v[:, :w] for v, w in zip(values, widths)], _SEQUENCE_KEYS[key], left=True)
            completion = _pad([v[:, w:] for v, w in zip(values, widths)], _SEQUENCE_KEYS[key], left=False)
            merged[key] = torch.cat([prompt, completion], dim=1)
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
