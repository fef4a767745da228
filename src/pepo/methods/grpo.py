"""GRPO: every token of a response shares its sequence advantage (TRL's loss, untouched)."""

from __future__ import annotations

from pepo.methods.base import Method

__all__ = ["GRPO"]


class GRPO(Method):
    name = "grpo"
    description = "GRPO: every token of a response shares its sequence advantage (baseline)."
