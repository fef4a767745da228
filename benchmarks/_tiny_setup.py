"""Shared set-up for the CPU benchmarks: the demo's tiny Qwen2.5-VL, data and a PEPOTrainer step."""

from __future__ import annotations

import tempfile
from typing import Callable

import torch


def tiny_trainer(method: str, tmp: str, **config) -> tuple[object, Callable[[], None]]:
    """A PEPOTrainer on the demo's model and data, and ``step()`` = generate 8 prompts x 8 samples + loss + backward."""
    from pepo.data.synthetic import make_split, synthetic_accuracy_reward, text_corpus
    from pepo.models.tiny import build_tiny_qwen2_5_vl, train_tiny_tokenizer
    from pepo.sft import answer_completion
    from pepo.trainer import PEPOConfig, PEPOTrainer

    rows = make_split(64, seed=0).map(lambda r: {"images": [r["image"]]}, remove_columns=["image"])
    tokenizer = train_tiny_tokenizer(text_corpus() + [answer_completion("3")])
    model, processor = build_tiny_qwen2_5_vl(tokenizer)
    trainer = PEPOTrainer(
        model=model, reward_funcs=synthetic_accuracy_reward, train_dataset=rows, processing_class=processor,
        args=PEPOConfig(output_dir=tmp, method=method, per_device_train_batch_size=64, num_generations=8,
                        max_steps=1000, max_completion_length=6, report_to="none", bf16=False, use_cpu=True,
                        save_strategy="no", disable_tqdm=True, logging_steps=1000, **config),
    )
    prompts = next(iter(trainer.get_train_dataloader()))  # the same prompts each step: fresh completions
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1

    def step() -> None:
        trainer._buffered_inputs = None
        torch.manual_seed(0)  # identical sampling for every method
        inputs = trainer._prepare_inputs(prompts)
        trainer.compute_loss(trainer.model, inputs).backward()

    return trainer, step


def scratch_dir() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="pepo-bench-")
