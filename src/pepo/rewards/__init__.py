"""Verifiable rewards in TRL's reward-function signature: ``f(completions, **columns) -> list[float]``.

``REWARDS`` maps the names accepted by ``--reward_funcs`` to functions. Every function accepts TRL's
keyword call (``prompts=``, ``completions=``, ``completion_ids=``, dataset columns such as ``answer``),
ignores keywords it does not use, takes string or message-list completions, and returns one float per
completion (never None). Ground truth comes from the ``answer`` column.
"""

from __future__ import annotations

from typing import Callable

from pepo.rewards.choice import choice_reward
from pepo.rewards.exact_match import exact_match_reward, extract_answer
from pepo.rewards.format import boxed_format_reward, format_reward
from pepo.rewards.iou import iou50_reward, iou_reward
from pepo.rewards.math_accuracy import accuracy_reward

__all__ = [
    "REWARDS",
    "get_reward_funcs",
    "exact_match_reward",
    "extract_answer",
    "format_reward",
    "boxed_format_reward",
    "accuracy_reward",
    "boxed_accuracy_reward",
    "iou_reward",
    "iou50_reward",
    "choice_reward",
]


def _synthetic_accuracy(*args, **kwargs):
    from pepo.data.synthetic import synthetic_accuracy_reward

    return synthetic_accuracy_reward(*args, **kwargs)


_synthetic_accuracy.__name__ = "synthetic_accuracy"

def boxed_accuracy_reward(completions, answer, **kwargs) -> list[float]:
    """:func:`accuracy_reward` under the ``\\boxed{}`` protocol (prediction = the last box)."""
    return accuracy_reward(completions, answer, protocol="boxed", **kwargs)


REWARDS: dict[str, Callable[..., list[float]]] = {
    "synthetic_accuracy": _synthetic_accuracy,
    "exact_match": exact_match_reward,
    "format": format_reward,  # <think>..</think><answer>..</answer>, strict (see pepo.rewards.format)
    "boxed_format": boxed_format_reward,  # at least one non-empty, balanced \\boxed{..}
    "accuracy": accuracy_reward,  # math-verify equality of the <answer> span with the `answer` column
    "boxed_accuracy": boxed_accuracy_reward,  # math-verify equality of the last \\boxed{..} with `answer`
    "iou": iou_reward,  # continuous IoU of the predicted box with the `answer` box
    "iou50": iou50_reward,  # 1.0 iff IoU >= 0.5
    "choice": choice_reward,  # option letter / class name against the `answer` column
}


def get_reward_funcs(names: list[str]) -> list[Callable[..., list[float]]]:
    """Look up reward functions by name; unknown names fail with the list of valid ones."""
    unknown = [n for n in names if n not in REWARDS]
    if unknown:
        raise ValueError(f"reward_funcs: unknown reward {unknown}; choose from {sorted(REWARDS)}.")
    if not names:
        raise ValueError("reward_funcs: at least one reward function is needed.")
    return [REWARDS[n] for n in names]
