"""DAPO (Yu et al., 2025) as a preset of TRL options plus pepo's dynamic sampling."""

from __future__ import annotations

from typing import Any

from pepo.methods.base import Method

__all__ = ["DAPO", "DAPO_PRESET"]

#: clip-higher, token-level loss, overlong filtering and dynamic sampling (drop groups whose total reward is equal)
DAPO_PRESET: dict[str, Any] = {"loss_type": "dapo", "epsilon_high": 0.28, "mask_truncated_completions": True,
                               "dynamic_sampling": True}


class DAPO(Method):
    name = "dapo"
    description = ("DAPO preset: loss_type dapo, clip-higher (epsilon_high 0.28), overlong filtering "
                   "(mask_truncated_completions), dynamic sampling; each only where not set explicitly.")
    preset = DAPO_PRESET
