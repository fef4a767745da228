"""Supervised warm start: teach a freshly built model the answer format so that RL has signal.

A randomly initialised VLM answers nothing correctly, so every GRPO group has reward 0 and no
advantage. A short supervised pass on (prompt, ``<answer>X</answer>``) pairs fixes that. It must
stop early: a model already near its ceiling leaves RL nothing to improve (a probe on this machine
saw +2-3 points from a warm start saturated at ~63%, +17 from ~40-45%). So the pass checks
held-out accuracy every ``eval_every`` steps and stops as soon as it reaches ``target_accuracy``.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from pepo.eval.generation import encode_prompts, generate_completions

__all__ = ["WarmStartConfig", "WarmStartResult", "answer_completion", "completion_loss", "warm_start"]


def answer_completion(answer: str) -> str:
    """The completion text the warm start teaches: ``<answer>{answer}</answer>``."""
    return f"<answer>{answer}</answer>"


@dataclass
class WarmStartConfig:
    """Settings of the supervised warm start (counted in optimizer steps, not seconds)."""

    max_steps: int = field(default=500, metadata={"help": "Upper bound on supervised steps."})
    learning_rate: float = field(default=1.5e-3, metadata={"help": "AdamW learning rate."})
    batch_size: int = field(default=32, metadata={"help": "Examples per step."})
    eval_every: int = field(default=20, metadata={"help": "Check held-out greedy accuracy every N steps."})
    target_accuracy: float = field(
        default=0.40, metadata={"help": "Stop as soon as held-out accuracy reaches this (leave room for RL)."}
    )
    min_accuracy: float = field(
        default=0.30, metadata={"help": "A warm start that ends below this counts as failed (caller may retry)."}
    )
    max_new_tokens: int = field(default=8, metadata={"help": "Generation length for the held-out check."})


@dataclass
class WarmStartResult:
    steps: int
    accuracy: float
    succeeded: bool
    history: list[tuple[int, float, float]]  # (step, train loss, held-out accuracy)


def completion_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy over completion tokens of a left-padded batch from ``encode_prompts``."""
    input_ids = batch["input_ids"]
    full_len = batch["attention_mask"].sum(dim=1)
    completion_len = full_len - batch["prompt_lengths"]
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)
    is_completion = positions[None, :] >= (input_ids.shape[1] - completion_len)[:, None]
    labels = input_ids.masked_fill(~is_completion, -100)
    model_inputs = {k: v for k, v in batch.items() if k != "prompt_lengths"}
    return model(**model_inputs, labels=labels).loss


def warm_start(
    model: torch.nn.Module,
    processor: Any,
    train: Any,
    held_out: Any,
    score: Callable[[list[str], list[str]], float],
    config: WarmStartConfig = WarmStartConfig(),
    seed: int = 0,
    show_progress: bool = True,
) -> WarmStartResult:
    """Train ``model`` on ``train`` rows (``prompt``, ``images``, ``answer``) until held-out accuracy is reached.

    Args:
        train, held_out: datasets with columns ``prompt``, ``images``, ``answer``.
        score: ``score(completions, answers) -> accuracy in [0, 1]``.

    Returns:
        A :class:`WarmStartResult`; ``succeeded`` is False when accuracy ended below ``min_accuracy``.
    """
    rng = random.Random(seed)
    device = next(model.parameters()).device
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=0.0)
    history: list[tuple[int, float, float]] = []
    accuracy, step, losses = 0.0, 0, []

    def evaluate() -> float:
        outs = generate_completions(
            model, processor, held_out["prompt"], held_out["images"], config.max_new_tokens,
            show_progress=False,
        )
        return score([o[0] for o in outs], list(held_out["answer"]))

    order: list[int] = []
    bar = tqdm(total=config.max_steps, desc="warm start", unit="step", disable=not show_progress)
    model.train()
    while step < config.max_steps:
        if len(order) < config.batch_size:
            order += rng.sample(range(len(train)), len(train))
        idx, order = order[: config.batch_size], order[config.batch_size :]
        rows = train.select(idx)
        batch = encode_prompts(
            processor, rows["prompt"], rows["images"], [answer_completion(a) + processor.tokenizer.eos_token for a in rows["answer"]]
        )
        loss = completion_loss(model, {k: v.to(device) for k, v in batch.items()})
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        step += 1
        bar.update(1)
        if step % config.eval_every == 0 or step == config.max_steps:
            accuracy = evaluate()
            mean_loss = sum(losses) / len(losses) if losses else math.nan
            history.append((step, mean_loss, accuracy))
            losses = []
            bar.set_postfix(loss=f"{mean_loss:.3f}", held_out_acc=f"{accuracy:.3f}")
            model.train()
            if accuracy >= config.target_accuracy:
                break
    bar.close()
    model.eval()
    return WarmStartResult(step, accuracy, accuracy >= config.min_accuracy, history)
