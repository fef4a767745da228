"""Evaluation task registry: which data, which split, which rule-based scorer, how long to generate.

Every task reuses the training data adapters (:mod:`pepo.data`) and reward functions
(:mod:`pepo.rewards`), so evaluation parses answers exactly as training rewards them.
"""

from __future__ import annotations

from argparse import Namespace
from dataclasses import dataclass, field
from typing import Any

from pepo.rewards import REWARDS
from pepo.rewards.exact_match import completion_text, extract_answer, normalize_answer

__all__ = ["EvalTask", "TASKS", "load_task_rows", "make_scorer"]

THINK_ANSWER = (
    "You FIRST think about the reasoning process as an internal monologue and then provide the final answer. "
    "The reasoning process MUST BE enclosed within <think> </think> tags. The final answer MUST BE put in "
    "<answer> </answer> tags."
)


@dataclass
class EvalTask:
    """One benchmark: data location and format, the scorer (a reward name), and the protocol in words."""

    dataset: str
    split: str
    reward: str
    protocol: str
    dataset_format: str = "generic"
    columns: dict[str, str] = field(default_factory=dict)
    instruction: str | None = THINK_ANSWER
    max_new_tokens: int = 1024


TASKS: dict[str, EvalTask] = {
    "synthetic": EvalTask(
        dataset="synthetic", split="test", reward="synthetic_accuracy", instruction=None, max_new_tokens=8,
        protocol="the embedded shape-counting task's test split (seed 0: 600 items by default); exact match of the "
        "<answer> span",
    ),
    "geometry3k": EvalTask(
        dataset="hiyouga/geometry3k", split="test", reward="accuracy",
        columns={"image_column": "images", "question_column": "problem", "answer_column": "answer"},
        protocol="free-form answer in <answer>, math-verify equality with the ground truth (the training verifier)",
    ),
    "refcoco": EvalTask(
        dataset="data/refcoco", split="val", reward="iou50", dataset_format="grounding", max_new_tokens=512,
        columns={"image_column": "image", "question_column": "question", "answer_column": "bbox"},
        protocol="IoU@0.5 of the first [x1, y1, x2, y2] in <answer>, absolute pixels of the resized image",
    ),
    "puzzlevqa": EvalTask(
        dataset="data/puzzlevqa", split="test", reward="choice", dataset_format="multiple_choice", max_new_tokens=512,
        columns={"image_column": "image", "question_column": "question", "answer_column": "answer"},
        protocol="top-1 accuracy: the option letter (or option text) in <answer>",
    ),
}


def load_task_rows(task: EvalTask, dataset: str | None = None, split: str | None = None,
                   image_root: str | None = None, limit: int | None = None, num_test: int = 600) -> Any:
    """The task's evaluation rows (``id``, ``prompt``, ``images``, ``answer``, ...) via the training adapters."""
    from pepo.data.loading import load_rl_data

    columns = {"image_column": "image", "question_column": "question", "answer_column": "answer", **task.columns}
    args = Namespace(
        dataset=dataset or task.dataset, dataset_config=None, train_split=split or task.split, test_split="none",
        image_root=image_root, num_train=0, num_test=num_test, skip_invalid_rows=False,
        prompt_instruction=task.instruction, dataset_format=task.dataset_format, box_convention="absolute_resized",
        min_pixels=3136, max_pixels=12845056, k_shot=None, classification_show_options=False,
        options_column="options", **columns,
    )
    if args.dataset == "synthetic":
        data, _ = load_rl_data(Namespace(**{**vars(args), "num_train": 1, "test_split": "test"}))
        rows = data["test"]
    else:
        data, _ = load_rl_data(args)
        rows = data["train"]
    return rows.select(range(min(limit, len(rows)))) if limit else rows


def make_scorer(task: EvalTask):
    """``score(completions, row) -> (scores, extracted answers)`` with the task's reward function."""
    reward = REWARDS[task.reward]

    def score(completions: list[str], row: dict) -> tuple[list[float], list[str]]:
        columns = {k: [v] * len(completions) for k, v in row.items() if k not in ("prompt", "images")}
        scores = reward(completions=completions, **columns)
        extracted = [normalize_answer(extract_answer(completion_text(c))) for c in completions]
        return [float(s) for s in scores], extracted

    return score
