"""Evaluation task registry: which data, which split, which rule-based scorer, how long to generate.

Every task reuses the training data adapters (:mod:`pepo.data`) and reward functions
(:mod:`pepo.rewards`), so evaluation parses answers exactly as training rewards them.
"""

from __future__ import annotations

from argparse import Namespace
from dataclasses import dataclass, field
from typing import Any, Callable

from pepo.eval.scorers import letters_in, logicvista_score, mathverse_score, mathvista_score
from pepo.rewards import REWARDS
from pepo.rewards.exact_match import completion_text, extract_answer, normalize_answer

__all__ = ["EvalTask", "TASKS", "load_task_rows", "load_task_data", "make_scorer", "customize_task"]

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
    config: str | None = None
    #: per-completion scorer ``(completion, row) -> (score, extracted)``; default: the ``reward`` function
    scorer: Callable[[Any, dict], tuple[float, str]] | None = None
    #: the default subset (e.g. MathVerse's multiple-choice items); ``--all_items`` keeps every row
    keep: Callable[[dict], bool] | None = None
    #: grounding tables: how the answer column writes boxes (``xyxy`` or COCO ``xywh``)
    box_format: str = "xyxy"


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
    "lisa_grounding": EvalTask(
        dataset="data/lisa_grounding", split="test", reward="iou50", dataset_format="grounding", max_new_tokens=512,
        columns={"image_column": "image", "question_column": "question", "answer_column": "bbox"},
        protocol="IoU@0.5 of the predicted box with the bounding box of the LISA polygon(s), resized-image pixels",
    ),
    "mathvista": EvalTask(
        dataset="AI4Math/MathVista", split="testmini", reward="accuracy", scorer=mathvista_score, max_new_tokens=2048,
        columns={"image_column": "decoded_image", "question_column": "query", "answer_column": "answer"},
        protocol="testmini; multiple choice: the letter (or the closest option text) must name the answer option; "
        "free form: integer / float at the item's precision / text / list comparison",
    ),
    "mathverse": EvalTask(
        dataset="AI4Math/MathVerse", config="testmini", split="testmini", reward="accuracy", scorer=mathverse_score,
        max_new_tokens=2048, keep=lambda row: str(row.get("question_type", "")).startswith("multi"),
        columns={"image_column": "image", "question_column": "question", "answer_column": "answer"},
        protocol="testmini, multiple-choice items only (as the paper's release; --all_items adds free-form items, "
        "scored with the math verifier); one letter must match",
    ),
    "logicvista": EvalTask(
        dataset="data/logicvista", split="test", reward="choice", scorer=logicvista_score, max_new_tokens=2048,
        keep=lambda row: len(letters_in(str(row["answer"]).upper())) == 1,
        columns={"image_column": "image", "question_column": "question", "answer_column": "answer"},
        protocol="single-letter items only (as the paper's release; --all_items adds multi-letter items, scored as "
        "letter sets); the predicted letter set must equal the answer's",
    ),
    "fgvc_aircraft": EvalTask(
        dataset="data/fgvc_aircraft", split="test", reward="choice", dataset_format="classification",
        max_new_tokens=512, protocol="accuracy: the class name in <answer> equals the label (normalised)",
    ),
    "flower102": EvalTask(
        dataset="data/flower102", split="test", reward="choice", dataset_format="classification",
        max_new_tokens=512, protocol="accuracy: the class name in <answer> equals the label (normalised)",
    ),
    "algopuzzlevqa": EvalTask(
        dataset="data/algopuzzlevqa", split="test", reward="choice", dataset_format="multiple_choice",
        max_new_tokens=512, columns={"image_column": "image", "question_column": "question", "answer_column": "answer"},
        protocol="top-1 accuracy: the option letter (or option text) in <answer> (out-of-distribution puzzles)",
    ),
    "puzzlevqa": EvalTask(
        dataset="data/puzzlevqa", split="test", reward="choice", dataset_format="multiple_choice", max_new_tokens=512,
        columns={"image_column": "image", "question_column": "question", "answer_column": "answer"},
        protocol="top-1 accuracy: the option letter (or option text) in <answer>",
    ),
}


def customize_task(task: EvalTask, image_column: str | None = None, question_column: str | None = None,
                   answer_column: str | None = None, reward: str | None = None,
                   instruction: str | None = None) -> EvalTask:
    """``task`` with other column names, reward or prompt instruction, for a dataset of your own.

    A new ``reward`` (a name in :data:`pepo.rewards.REWARDS`) replaces the task's scorer too.

    Raises:
        ValueError: an unknown reward name (the valid ones are listed).
    """
    import dataclasses

    columns = dict(task.columns)
    for key, value in (("image_column", image_column), ("question_column", question_column),
                       ("answer_column", answer_column)):
        if value is not None:
            columns[key] = value
    changes: dict[str, Any] = {"columns": columns}
    if reward is not None:
        if reward not in REWARDS:
            raise ValueError(f"unknown reward {reward!r}; choose one of {sorted(REWARDS)}")
        changes.update(reward=reward, scorer=None, protocol=f"{reward} reward of the completion")
    if instruction is not None:
        changes["instruction"] = instruction or None
    return dataclasses.replace(task, **changes)


def load_task_data(task: EvalTask, dataset: str | None = None, split: str | None = None,
                   image_root: str | None = None, limit: int | None = None, num_test: int = 600,
                   all_items: bool = False, source_format: str = "auto", class_names: str | None = None,
                   box_format: str | None = None, with_images: bool = True, log: Any = print) -> tuple[Any, Any]:
    """``(rows, loaded)``: the task's evaluation rows (``id``, ``prompt``, ``images``, ``answer``, ...) read with the
    dataset's format reader and the task's adapter, and the :class:`pepo.data.loading.LoadedData` saying how.

    The task's default subset (``keep``) applies unless ``all_items``; ``limit`` then takes the first rows.
    ``with_images=False`` builds the prompts without opening images (``images`` is ``[]``).
    """
    from pepo.data.loading import load_data

    columns = {"image_column": "image", "question_column": "question", "answer_column": "answer", **task.columns}
    args = Namespace(
        dataset=dataset or task.dataset, dataset_config=None if dataset else task.config, train_split=split or task.split, test_split="none",
        image_root=image_root, num_train=0, num_test=num_test, skip_invalid_rows=False,
        prompt_instruction=task.instruction, dataset_format=task.dataset_format, box_convention="absolute_resized",
        min_pixels=3136, max_pixels=12845056, k_shot=None, classification_show_options=False,
        options_column="options", source_format=source_format, class_names=class_names,
        box_format=box_format or task.box_format, **columns,
    )
    if args.dataset == "synthetic":
        loaded = load_data(Namespace(**{**vars(args), "num_train": 1, "test_split": "test"}), log=log)
        rows = loaded.splits["test"]
    else:
        loaded = load_data(args, with_images=with_images, log=log)
        rows = loaded.splits["train"]
    if task.keep is not None and not all_items:
        rows = rows.filter(task.keep)
        if len(rows) == 0:
            raise ValueError(f"no rows of {args.dataset} are in the task's default subset; pass --all_items.")
    return (rows.select(range(min(limit, len(rows)))) if limit else rows), loaded


def load_task_rows(task: EvalTask, dataset: str | None = None, split: str | None = None,
                   image_root: str | None = None, limit: int | None = None, num_test: int = 600,
                   all_items: bool = False, **kwargs: Any) -> Any:
    """The rows of :func:`load_task_data` (same arguments)."""
    return load_task_data(task, dataset, split, image_root, limit, num_test, all_items, **kwargs)[0]


_UNTAGGED_REWARDS = ("exact_match", "synthetic_accuracy", "iou", "iou50")


def make_scorer(task: EvalTask):
    """``score(completions, row) -> (scores, extracted answers)`` with the task's reward function."""
    reward = REWARDS[task.reward]

    def score(completions: list[str], row: dict) -> tuple[list[float], list[str]]:
        if task.scorer is not None:
            pairs = [task.scorer(c, row) for c in completions]
            return [p[0] for p in pairs], [p[1] for p in pairs]
        columns = {k: [v] * len(completions) for k, v in row.items() if k not in ("prompt", "images")}
        scores = reward(completions=completions, **columns)
        untagged = "visible" if task.reward in _UNTAGGED_REWARDS else "none"  # as the reward reads it
        contract = {"untagged": untagged, "keep_phrase": untagged == "visible"}
        extracted = [normalize_answer(extract_answer(completion_text(c), **contract)) for c in completions]
        return [float(s) for s in scores], extracted

    return score
