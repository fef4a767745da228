"""Batched generation for VLM prompts in TRL's conversational format (transformers backend)."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from PIL import Image
from tqdm.auto import tqdm

__all__ = ["encode_prompts", "generate_completions"]


def encode_prompts(
    processor: Any,
    prompts: Sequence[list[dict]],
    images: Sequence[Image.Image | list[Image.Image]],
    completions: Sequence[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Tokenise prompts (and optionally completions to append) with their images, left-padded.

    Args:
        processor: a transformers multimodal processor with a chat template.
        prompts: conversational prompts, one per row.
        images: one image or a list of images per row, in the order of the prompt's image parts.
        completions: optional assistant text appended after the generation prompt (for teacher forcing).

    Returns:
        The processor's batch (``input_ids`` (B, S), ``attention_mask`` (B, S), pixel tensors), plus
        ``prompt_lengths`` (B,): the number of non-pad prompt tokens of each row when ``completions``
        is given.
    """
    texts = [processor.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts]
    image_lists = [im if isinstance(im, list) else [im] for im in images]
    tokenizer = processor.tokenizer
    tokenizer.padding_side = "left"
    if completions is None:
        return processor(text=texts, images=image_lists, padding=True, return_tensors="pt")
    prompt_batch = processor(text=texts, images=image_lists, padding=True, return_tensors="pt")
    full = [t + c for t, c in zip(texts, completions)]
    batch = processor(text=full, images=image_lists, padding=True, return_tensors="pt")
    batch["prompt_lengths"] = prompt_batch["attention_mask"].sum(dim=1)
    return batch


@torch.no_grad()
def generate_completions(
    model: torch.nn.Module,
    processor: Any,
    prompts: Sequence[list[dict]],
    images: Sequence[Image.Image | list[Image.Image]],
    max_new_tokens: int = 16,
    batch_size: int = 64,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    num_return_sequences: int = 1,
    show_progress: bool = True,
    desc: str = "generating",
) -> list[list[str]]:
    """Generate completions for each prompt.

    Returns:
        ``completions[i][k]``: the k-th of ``num_return_sequences`` decoded completions of prompt i
        (special tokens removed).
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    tokenizer = processor.tokenizer
    out: list[list[str]] = []
    bar = tqdm(total=len(prompts), desc=desc, unit="prompt", disable=not show_progress, leave=False)
    for start in range(0, len(prompts), batch_size):
        batch = encode_prompts(processor, prompts[start : start + batch_size], images[start : start + batch_size])
        batch = {k: v.to(device) for k, v in batch.items()}
        generated = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            temperature=temperature if do_sample else None,
            top_p=top_p if do_sample else None,
            top_k=0 if do_sample else None,
            num_return_sequences=num_return_sequences,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        texts = tokenizer.batch_decode(generated[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
        for i in range(0, len(texts), num_return_sequences):
            out.append(texts[i : i + num_return_sequences])
        bar.update(min(batch_size, len(prompts) - start))
    bar.close()
    model.train(was_training)
    return out
