"""High-Entropy RL (Wang et al., 2025): only the top-entropy tokens train.

TRL implements the token mask as ``top_entropy_quantile`` (threshold over the micro-batch's valid
tokens); this method sets it from ``high_entropy_quantile``.
"""

from __future__ import annotations

from typing import Any

from pepo.methods.base import Method

__all__ = ["HighEntropy"]


class HighEntropy(Method):
    name = "high_entropy"
    description = "High-Entropy RL baseline: only the top `high_entropy_quantile` tokens by entropy train."
    needs_entropies = True

    def configure(self, args: Any) -> None:
        if args.top_entropy_quantile not in (1.0, args.high_entropy_quantile):
            raise ValueError(
                f"method='high_entropy' sets top_entropy_quantile from high_entropy_quantile="
                f"{args.high_entropy_quantile}, but top_entropy_quantile={args.top_entropy_quantile} was also "
                "given: set high_entropy_quantile only."
            )
        args.top_entropy_quantile = args.high_entropy_quantile
