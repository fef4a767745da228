"""Scoring protocols of ``pepo eval --protocol``: ``pepo`` (the answer contract, :mod:`pepo.eval.scorers`) and
``release`` (the paper's release scripts' rules, :mod:`pepo.eval.protocols.release`)."""

from pepo.eval.protocols.release import RELEASE_TASKS, MISSING_MATHRULER, release_reward, release_scorer

PROTOCOL_NAMES = ("pepo", "release", "both")

__all__ = ["PROTOCOL_NAMES", "RELEASE_TASKS", "MISSING_MATHRULER", "release_reward", "release_scorer"]
