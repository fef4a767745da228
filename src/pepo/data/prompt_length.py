"""Prompt lengths with their images, checked against the context before a run starts.

Why this exists
---------------
A prompt of a vision-language model is its text *plus* the run of image tokens the processor expands each
image into (Qwen2.5-VL: one per 28x28 pixels after resizing, so a large image is hundreds or thousands of
tokens). Two known failures come from limits that ignore this:

* a prompt truncated to ``max_prompt_length`` cuts image tokens, and the model then fails with an opaque
  "image features and image tokens do not match" shape error, or trains on a prompt without its image
  (TRL PR #5881, EasyR1 issue #267);
* a prompt longer than the generation engine's context is refused by vLLM in the middle of a run, naming no
  dataset row.

TRL 1.16's ``GRPOTrainer`` has no ``max_prompt_length`` (``GRPOConfig(max_prompt_length=...)`` raises
TypeError, pepo's CLI refuses the flag) and does not truncate prompts: ``_tokenize_prompts`` calls
``processing_class.apply_chat_template(..., tokenize=True)`` without ``truncation``, so every image token
reaches the model. The limit that remains is the context: a prompt plus ``max_completion_length`` tokens
must fit ``vllm_max_model_length`` (vLLM rollouts; TRL's documented rule) or the model's
``max_position_embeddings`` (transformers generation, the ceiling TRL itself uses). This module measures
every prompt exactly as the processor tokenizes it, with its images, and stops with the row, the length
needed and the fixes before any weights are trained or any sample is generated.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

from pepo.data.errors import DataError

__all__ = ["PromptTooLong", "PromptLengths", "measure_prompt", "model_context", "check_prompt_lengths", "check_run_prompts",
           "check_eval_prompts"]


class PromptTooLong(DataError):
    """A prompt (with its image tokens) that does not fit the context; the message names the row and the fix."""


@dataclass(frozen=True)
class PromptLengths:
    """What :func:`check_prompt_lengths` measured over one split (all lengths in tokens)."""

    rows: int
    longest: int  # tokens of the longest prompt, image tokens included
    longest_row: int  # its index in the split
    longest_image_tokens: int
    context: int
    seconds: float

    def summary(self, split: str) -> str:
        return (f"prompt lengths ({split}): {self.rows} rows, longest {self.longest} tokens (row {self.longest_row}, "
                f"{self.longest_image_tokens} image tokens) of a context of {self.context}; "
                f"measured in {self.seconds:.1f}s")


#: processors that replace each image placeholder token by a run of the same token whose length depends only on
#: the image's size (``_get_num_multimodal_tokens``): their count needs no pixel work (see :func:`measure_prompt`)
_RUN_OF_PLACEHOLDERS = ("Qwen2VLProcessor", "Qwen2_5_VLProcessor")


def _counted_without_pixels(processor: Any, text: str, images: list, image_token_id: int) -> tuple[int, int] | None:
    """Qwen2-VL family: the tokenizer splits around the placeholder (an added token), so the processor's ids are
    the text's ids with each placeholder repeated n_i times, n_i = patches // merge_size^2 of image i after
    resizing; exactly what the full processor gives (tested), without resizing or normalising pixels."""
    if type(processor).__name__ not in _RUN_OF_PLACEHOLDERS or not hasattr(processor, "_get_num_multimodal_tokens"):
        return None
    tokenizer = processor.tokenizer
    if tokenizer.convert_tokens_to_ids(getattr(processor, "image_token", None)) != image_token_id:
        return None
    ids = tokenizer(text)["input_ids"]  # as the processor calls it
    placeholders = sum(1 for i in ids if i == image_token_id)
    if placeholders != len(images):
        return None  # the processor raises its own error for this; let it
    sizes = [(im.height, im.width) for im in images]
    runs = processor._get_num_multimodal_tokens(image_sizes=sizes)["num_image_tokens"] if sizes else []
    return len(ids) + sum(runs) - placeholders, sum(runs)


def measure_prompt(processor: Any, prompt: list[dict], images: Sequence[Any], image_token_id: int,
                   from_pixels: bool = False) -> tuple[int, int]:
    """``(tokens, image_tokens)`` of one conversational prompt with its generation prompt and images, tokenized
    as the processor does for generation (no padding, no truncation).

    Qwen2-VL / Qwen2.5-VL processors are counted from the image sizes (no pixel work); every other processor is
    run on the prompt and its images (all processors with ``from_pixels=True``)."""
    text = processor.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    images = [] if images is None else list(images) if isinstance(images, (list, tuple)) else [images]
    fast = None if from_pixels else _counted_without_pixels(processor, text, images, image_token_id)
    if fast is not None:
        return fast
    kwargs = {"images": [images]} if images else {}
    ids = processor(text=[text], return_tensors="pt", **kwargs)["input_ids"][0]
    return int(ids.numel()), int((ids == image_token_id).sum())


def model_context(model_config: Any, vllm_max_model_length: int | None = None) -> tuple[int, str]:
    """``(tokens, name)``: the context a prompt plus its completion must fit, and the option that sets it.

    ``vllm_max_model_length`` (vLLM rollouts / ``pepo eval --max_model_len``) wins when given; otherwise the text
    decoder's ``max_position_embeddings`` (the config's ``text_config`` for VLMs), which is also vLLM's default.
    """
    if vllm_max_model_length is not None:
        return int(vllm_max_model_length), "vllm_max_model_length"
    get_text = getattr(model_config, "get_text_config", None)
    text_config = get_text() if callable(get_text) else model_config
    value = getattr(text_config, "max_position_embeddings", None) or getattr(model_config, "max_position_embeddings",
                                                                             None)
    if value is None:
        raise ValueError(f"{type(model_config).__name__} has no max_position_embeddings: pass the context explicitly.")
    return int(value), "the model's max_position_embeddings"


def _row_name(split: str | None, index: int, row: dict) -> str:
    where = f"split {split!r} row {index}" if split else f"row {index}"
    row_id = row.get("id")
    return f"{where} (id {row_id!r})" if row_id not in (None, "") else where


def check_prompt_lengths(
    processor: Any,
    rows: Sequence[dict],
    image_token_id: int,
    *,
    context: int,
    context_name: str,
    completion_length: int,
    completion_name: str = "max_completion_length",
    split: str | None = None,
) -> PromptLengths:
    """Measure every row's prompt with its images; raise :class:`PromptTooLong` at the first that, with
    ``completion_length`` tokens after it, does not fit ``context``.

    Args:
        rows: RL rows (``prompt``, ``images``, optional ``id``), e.g. a ``datasets.Dataset`` split.
        image_token_id: the token the model replaces by image features (:func:`pepo.models.loading.image_token_id`).
        context: tokens available for prompt + completion; ``context_name`` names the option that sets it.
        completion_length: tokens reserved for the completion; ``completion_name`` names its option.
        split: named in the error.

    Cost: Qwen2-VL-family processors are counted from the image sizes (no pixel work); other processors run
    once per row with the row's images, as in training (``python -m benchmarks.prompt_length_cost`` prints both);
    nothing runs on the model.
    """
    start = time.perf_counter()
    longest = (-1, 0, 0)  # (tokens, row, image tokens)
    budget = context - completion_length
    for index in range(len(rows)):
        row = rows[index]
        tokens, image_tokens = measure_prompt(processor, row["prompt"], row.get("images"), image_token_id)
        if tokens > longest[0]:
            longest = (tokens, index, image_tokens)
        if tokens <= budget:
            continue
        with_image = (f"with its image{'s' if len(row.get('images') or []) > 1 else ''} ({image_tokens} image tokens)"
                      if image_tokens else "(text only, no image tokens)")
        needed = tokens + completion_length
        fixes = [f"set {context_name} >= {needed}" if context_name != "the model's max_position_embeddings"
                 else f"use a model with a context of >= {needed} tokens"]
        if tokens < context:
            fixes.append(f"lower {completion_name} to <= {context - tokens}")
        if image_tokens:
            fixes.append("shrink the image (the processor's max_pixels / image size)")
        raise PromptTooLong(
            f"{_row_name(split, index, row)}: the prompt is {tokens} tokens {with_image}; with "
            f"{completion_name}={completion_length} it needs {needed} tokens of context, but {context_name} is "
            f"{context}. pepo and TRL never truncate prompts (cutting image tokens breaks the model's image "
            f"features), so this row cannot be generated within the context (vLLM refuses it; transformers would run past the "
            f"positions the model was trained for): {', or '.join(fixes)}; or drop the row."
        )
    return PromptLengths(len(rows), max(longest[0], 0), longest[1], longest[2], context,
                         time.perf_counter() - start)


def check_run_prompts(
    splits: dict[str, Sequence[dict]],
    processor: Any,
    model_config: Any,
    image_token_id: int,
    training_args: Any,
    eval_max_new_tokens: int | None,
) -> list[str]:
    """The check of a training run (``pepo train`` / ``demo``), before any step: the ``train`` split against the
    rollout context (``vllm_max_model_length`` when ``use_vllm`` and set, else the model's) with
    ``max_completion_length``; the ``test`` split (scored with transformers before and after RL) against the
    model's context with ``eval_max_new_tokens``. Returns one summary line per split checked.

    Raises:
        PromptTooLong: the first row that does not fit, with the length it needs.
    """
    lines = []
    vllm_len = getattr(training_args, "vllm_max_model_length", None) if getattr(training_args, "use_vllm", False) \
        else None
    for name, split in splits.items():
        if name == "train":
            context, context_name = model_context(model_config, vllm_len)
            completion, completion_name = training_args.max_completion_length, "max_completion_length"
        elif eval_max_new_tokens is not None:
            context, context_name = model_context(model_config)
            completion, completion_name = eval_max_new_tokens, "eval_max_new_tokens"
        else:
            continue
        report = check_prompt_lengths(processor, split, image_token_id, context=context, context_name=context_name,
                                      completion_length=completion, completion_name=completion_name, split=name)
        lines.append(report.summary(name))
    return lines


def check_eval_prompts(rows: Sequence[dict], processor: Any, model: Any, model_path: str, max_new_tokens: int,
                       max_model_len: int | None = None) -> str:
    """The check of ``pepo eval``: every row's prompt plus ``max_new_tokens`` must fit ``max_model_len`` (vLLM) or
    the model's context. ``model`` may be None (vLLM backend: the config is read from ``model_path``). Returns the
    summary line; raises :class:`PromptTooLong` naming the row (its prompt id) and the length needed."""
    from pepo.models.loading import image_token_id

    if model is not None:
        config = model.config
    else:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(model_path)
    context, context_name = model_context(config, max_model_len)
    if context_name == "vllm_max_model_length":
        context_name = "--max_model_len"
    report = check_prompt_lengths(processor, rows, image_token_id(config, processor), context=context,
                                  context_name=context_name, completion_length=max_new_tokens,
                                  completion_name="--max_new_tokens")
    return report.summary("eval")
