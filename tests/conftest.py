"""Shared fixtures: a tiny Qwen2.5-VL (tokenizer trained in code) and tiny RL datasets, built offline."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch
from datasets import Dataset

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from pepo.data.synthetic import text_corpus
    from pepo.models.tiny import train_tiny_tokenizer

    return train_tiny_tokenizer(text_corpus() + ["<answer>3</answer>", "<answer>yes</answer>"])


@pytest.fixture()
def tiny_vlm(tiny_tokenizer):
    """A fresh (model, processor) pair per test: tests train it."""
    from pepo.models.tiny import build_tiny_qwen2_5_vl

    return build_tiny_qwen2_5_vl(tiny_tokenizer, seed=0)


def make_rl_rows(n: int, images_per_prompt: int = 1, seed: int = 0) -> Dataset:
    """RL rows (prompt, images, answer, question_type, id) from the synthetic generator."""
    from pepo.data.synthetic import make_split

    raw = make_split(n * images_per_prompt, seed=seed)
    rows = []
    for i in range(n):
        group = [raw[i * images_per_prompt + k] for k in range(images_per_prompt)]
        question = group[0]["prompt"][0]["content"][0]["text"]
        content = [{"type": "text", "text": question}] + [{"type": "image"}] * images_per_prompt
        rows.append({
            "id": str(i), "prompt": [{"role": "user", "content": content}],
            "images": [g["image"] for g in group], "answer": group[0]["answer"],
            "question_type": group[0]["question_type"],
        })
    return Dataset.from_list(rows)


@pytest.fixture(scope="session")
def rl_rows():
    return make_rl_rows(16)
