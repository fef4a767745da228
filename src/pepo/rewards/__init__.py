"""Verifiable rewards in TRL's reward-function signature: ``f(completions, **columns) -> list[float]``.

``REWARDS`` maps the names accepted by ``--reward_funcs`` to functions.
"""

from __future__ import annotations

from typing import Callable

from pepo.rewards.exact_match import exact_match_reward, extract_answer

__all__ = ["REWARDS", "get_reward_funcs", "exact_match_reward", "extract_answer"]


def _synthetic_accuracy(*args, **kwargs):
    from pepo.data.synthetic import synthetic_accuracy_reward

    return synthetic_accuracy_reward(*args, **kwargs)


_synthetic_accuracy.__name__ = "synthetic_accuracy"

REWARDS: dict[str, Callable[..., list[float]]] = {
    "synthetic_accuracy": _synthetic_accuracy,
    "exact_match": exact_match_reward,
}


def get_reward_funcs(names: list[str]) -> list[Callable[..., list[float]]]:
    """Look up reward functions by name; unknown names fail with the list of valid ones."""
    unknown = [n for n in names if n not in REWARDS]
    if unknown:
        raise ValueError(f"reward_funcs: unknown reward {unknown}; choose from {sorted(REWARDS)}.")
    if not names:
        raise ValueError("reward_funcs: at least one reward function is needed.")
    return [REWARDS[n] for n in names]
