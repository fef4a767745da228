"""Batched generation for VLM prompts in TRL's conversational format (transformers backend)."""

from __future__ import annotations

import hashlib
from typing import Any, Sequence

import torch
from PIL import Image
from tqdm.auto import tqdm

__all__ = ["encode_prompts", "generate_completions", "SeededRowSampler", "sample_seed"]


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


class SeededRowSampler:
    """A logits processor that turns greedy decoding into sampling with one random stream per row.

    Each row r draws its own Gumbel noise from ``torch.Generator`` seeded with ``seeds[r]``, added to
    its temperature-scaled, top-p-filtered logits; the argmax of the result is an exact sample from
    that filtered softmax (the Gumbel-max trick). Row r's samples therefore depend only on its own
    seed and its own logits, not on which rows share the batch, so many prompts can be generated in
    one batch and still give the samples each would give alone (up to floating-point differences in
    the logits between batch shapes, which matter only at exact near-ties).

    Use with ``model.generate(..., do_sample=False, logits_processor=LogitsProcessorList([sampler]))``.
    """

    def __init__(self, seeds: Sequence[int], temperature: float = 1.0, top_p: float = 1.0):
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0 for sampling, got {temperature}")
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        self.seeds = list(seeds)
        self.temperature = temperature
        self.top_p = top_p
        self._generators: list[torch.Generator] | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """(B, V) next-token scores -> (B, V) perturbed scores whose argmax is the sample."""
        if scores.shape[0] != len(self.seeds):
            raise ValueError(f"{scores.shape[0]} rows in the batch but {len(self.seeds)} seeds")
        if self._generators is None:
            self._generators = [torch.Generator(device=scores.device).manual_seed(s) for s in self.seeds]
        logits = scores.float() / self.temperature
        if self.top_p < 1:
            sorted_logits, order = logits.sort(dim=-1, descending=True)
            probs = sorted_logits.softmax(dim=-1)
            # drop a token once the tokens before it already cover top_p (the first one always stays)
            drop = (probs.cumsum(dim=-1) - probs) >= self.top_p
            logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
        tiny = torch.finfo(torch.float32).tiny
        noise = torch.stack([
            torch.rand(logits.shape[-1], generator=g, device=logits.device, dtype=torch.float32) for g in self._generators
        ]).clamp_(tiny, 1.0 - 1e-7)
        return logits - torch.log(-torch.log(noise))


def sample_seed(prompt_seed: int, sample: int) -> int:
    """The seed of sample ``sample`` of a prompt whose seed is ``prompt_seed`` (63-bit, stable)."""
    digest = hashlib.sha256(f"{prompt_seed}:{sample}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


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
    seeds: Sequence[int] | None = None,
) -> list[list[str]]:
    """Generate completions for each prompt, ``batch_size`` prompts per ``model.generate`` call.

    Args:
        seeds: one seed per prompt. With ``do_sample``, sample k of prompt i is drawn by
            :class:`SeededRowSampler` from ``sample_seed(seeds[i], k)``, so it does not depend on the
            batch it is generated in; without ``seeds``, sampling uses the global torch RNG.

    Returns:
        ``completions[i][k]``: the k-th of ``num_return_sequences`` decoded completions of prompt i
        (special tokens removed).
    """
    from transformers import LogitsProcessorList

    if seeds is not None and len(seeds) != len(prompts):
        raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    tokenizer = processor.tokenizer
    n = num_return_sequences
    per_row = do_sample and seeds is not None
    out: list[list[str]] = []
    bar = tqdm(total=len(prompts), desc=desc, unit="prompt", disable=not show_progress, leave=False)
    for start in range(0, len(prompts), batch_size):
        chunk = slice(start, start + batch_size)
        if per_row:  # one row per sample, each with its own random stream
            batch = encode_prompts(processor, [p for p in prompts[chunk] for _ in range(n)],
                                   [im for im in images[chunk] for _ in range(n)])
            sampler = SeededRowSampler([sample_seed(s, k) for s in seeds[chunk] for k in range(n)], temperature, top_p)
            options = dict(do_sample=False, logits_processor=LogitsProcessorList([sampler]), num_return_sequences=1,
                           temperature=None, top_p=None, top_k=None)
        else:
            batch = encode_prompts(processor, prompts[chunk], images[chunk])
            options = dict(do_sample=do_sample, temperature=temperature if do_sample else None,
                           top_p=top_p if do_sample else None, top_k=0 if do_sample else None, num_return_sequences=n)
        batch = {k: v.to(device) for k, v in batch.items()}
        generated = model.generate(
            **batch, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id, **options,
        )
        texts = tokenizer.batch_decode(generated[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
        for i in range(0, len(texts), n):
            out.append(texts[i : i + n])
        bar.update(len(prompts[chunk]))
    bar.close()
    model.train(was_training)
    return out
