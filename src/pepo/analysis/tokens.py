"""Per-token visual similarity, entropy, PEPO weight and hidden-state shift for sampled responses.

The numbers are computed the way :class:`pepo.trainer.PEPOTrainer` computes them during training:
the prompt (left-padded) and the generated completion ids (right-padded) are concatenated, one
forward runs with the hooks of :class:`pepo.hooks.VisualScoreCapture`, the entropies come from the
logits that produced each token (divided by the sampling temperature, as TRL does), and the
weights from :func:`pepo.weights.pepo_token_weights`. So the weight shown for a token is the weight
training would give it (before the ``1 - p + p w`` schedule).

For the hidden-state shift (the paper's Figure 3, left) the same forward carries a second copy of
each row whose image is blanked (same size, filled with the image's mean colour: the same number of
image tokens, so every position lines up) or removed (no image tokens; the completion still ends
the sequence). A hook compares the two copies at each hidden state as it appears, so nothing
larger than one layer's activations is ever kept.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch
from PIL import Image

from pepo.eval.generation import encode_prompts
from pepo.hooks import VisualScoreCapture, find_text_decoder, hidden_state_hooks
from pepo.masking import blank_image  # shared with PAPO / VPPO's image corruption; re-exported
from pepo.weights import pepo_token_weights, rows_without_image, token_entropy

__all__ = [
    "TokenAnalysisSettings", "SHIFT_MODES", "blank_image", "generate_completion_ids", "score_completions",
    "HiddenShiftCapture",
]

SHIFT_MODES = ("blank", "remove", "none")
SCORE_TYPES = ("cosine", "dot", "l2", "l1")


@dataclass
class TokenAnalysisSettings:
    """How responses are sampled and scored (defaults: the demo recipe's PEPO settings)."""

    score_type: str = "cosine"
    gate_alpha: float = 0.05
    gate_temperature: float = 1.8
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    num_samples: int = 1
    batch_size: int = 8
    shift: str = "blank"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.shift not in SHIFT_MODES:
            raise ValueError(f"shift must be one of {SHIFT_MODES}, got {self.shift!r}")
        for name in ("max_new_tokens", "num_samples", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature!r}")
        if self.score_type not in SCORE_TYPES:
            raise ValueError(f"score_type must be one of {SCORE_TYPES}, got {self.score_type!r}")
        if not self.gate_alpha >= 0:
            raise ValueError(f"gate_alpha must be >= 0, got {self.gate_alpha!r}")
        if not self.gate_temperature > 0:
            raise ValueError(f"gate_temperature must be > 0, got {self.gate_temperature!r}")


def _image_list(images: Any) -> list[Image.Image]:
    return list(images) if isinstance(images, (list, tuple)) else [images]


def _without_images(prompt: list[dict]) -> list[dict]:
    out = []
    for message in prompt:
        content = message["content"]
        if isinstance(content, list):
            content = [part for part in content if part.get("type") != "image"]
        out.append({**message, "content": content})
    return out


def _encode(processor: Any, prompts: Sequence[list[dict]], images: Sequence[list[Image.Image]] | None) -> dict:
    """Left-padded processor batch; ``images=None`` for prompts whose image parts were removed."""
    if images is not None:
        return dict(encode_prompts(processor, prompts, images))
    texts = [processor.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts]
    processor.tokenizer.padding_side = "left"
    return dict(processor(text=texts, padding=True, return_tensors="pt"))


def _left_pad(batch: dict, length: int, pad_id: int) -> dict:
    """Left-pad every (B, S) sequence tensor of a processor batch to ``length`` positions."""
    seq = batch["input_ids"].shape[1]
    if seq == length:
        return batch
    out = dict(batch)
    for key, value in batch.items():
        if isinstance(value, torch.Tensor) and value.dim() == 2 and value.shape[1] == seq:
            fill = pad_id if key == "input_ids" else 0
            out[key] = torch.cat([value.new_full((value.shape[0], length - seq), fill), value], dim=1)
    return out


@torch.no_grad()
def generate_completion_ids(
    model: torch.nn.Module,
    processor: Any,
    prompts: Sequence[list[dict]],
    images: Sequence[Any],
    settings: TokenAnalysisSettings,
) -> list[list[int]]:
    """Sample ``settings.num_samples`` completions per prompt; the token ids, as training would see them.

    Returns:
        ``ids[i * num_samples + k]``: completion token ids of sample k of prompt i, up to and
        including the first end-of-sequence token (as TRL's completion mask), padding removed.
    """
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in _encode(processor, prompts, [_image_list(i) for i in images]).items()}
    tokenizer = processor.tokenizer
    sample = settings.temperature > 0
    was_training = model.training
    model.eval()
    generated = model.generate(
        **batch, max_new_tokens=settings.max_new_tokens, do_sample=sample,
        temperature=settings.temperature if sample else None, top_p=settings.top_p if sample else None,
        top_k=0 if sample else None, num_return_sequences=settings.num_samples,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    model.train(was_training)
    configured = getattr(model.generation_config, "eos_token_id", None)
    eos = {tokenizer.eos_token_id} | set(configured if isinstance(configured, (list, tuple)) else [configured])
    out = []
    for row in generated[:, batch["input_ids"].shape[1] :].tolist():
        ids = []
        for token in row:
            ids.append(token)
            if token in eos:
                break
        out.append(ids)
    return out


class HiddenShiftCapture:
    """Per-layer shift between the two halves of a batch: rows ``[0, B)`` with the image, ``[B, 2B)`` without.

    For each of the L+1 hidden states (transformers' ``output_hidden_states`` convention, like
    :class:`pepo.hooks.VisualScoreCapture`) and each of the last C positions, the shift is
    ``1 - cos(h_with, h_without)`` (float32, in [0, 2]).
    """

    def __init__(self, model: torch.nn.Module):
        self.decoder_layers, self.final_norm = find_text_decoder(model)
        self.num_hidden_states = len(self.decoder_layers) + 1
        self.shifts: torch.Tensor | None = None

    @contextmanager
    def record(self, completion_length: int) -> Iterator["HiddenShiftCapture"]:
        """Arm the hooks for one forward over a 2B-row batch; ``shifts`` is then (L+1, B, C)."""
        layers: list[torch.Tensor | None] = [None] * self.num_hidden_states

        def store(index: int, hidden: torch.Tensor) -> None:
            half = hidden.shape[0] // 2
            tail = hidden[:, -completion_length:].float()
            cos = torch.nn.functional.cosine_similarity(tail[:half], tail[half:], dim=-1, eps=1e-8)
            layers[index] = (1.0 - cos).clamp_min(0.0)

        with hidden_state_hooks(self.decoder_layers, self.final_norm, store):
            yield self
        if any(x is None for x in layers):
            raise RuntimeError("the forward did not run through every decoder layer; no shift was captured")
        self.shifts = torch.stack(layers)


@torch.no_grad()
def score_completions(
    model: torch.nn.Module,
    processor: Any,
    prompts: Sequence[list[dict]],
    images: Sequence[Any],
    completion_ids: Sequence[Sequence[int]],
    settings: TokenAnalysisSettings,
    image_token: int,
    counterfactual: Callable[[Image.Image], Image.Image] = blank_image,
) -> list[dict[str, Any]]:
    """Similarity, entropy and PEPO weight of every completion token, and optionally the shift.

    Args:
        prompts / images: one conversational prompt and its image(s) per completion.
        completion_ids: the completions' token ids (non-empty), e.g. from :func:`generate_completion_ids`.
        image_token: id of the image placeholder token in ``input_ids``.
        counterfactual: maps each image to its stand-in when ``settings.shift == "blank"``
            (tests pass the identity to check that the shift is then zero).

    Returns:
        One dict per completion with ``similarity``, ``entropy`` (nats), ``weight`` (lists of C_i
        floats) and ``layer_shift``: a (L+1, C_i) float32 tensor of ``1 - cos`` per hidden state, or
        ``None`` when ``settings.shift == "none"``.
    """
    if len(completion_ids) != len(prompts) or any(len(c) == 0 for c in completion_ids):
        raise ValueError("need one non-empty completion per prompt")
    device = next(model.parameters()).device
    tokenizer = processor.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    image_lists = [_image_list(i) for i in images]
    batch = _encode(processor, prompts, image_lists)
    n = len(prompts)
    if settings.shift != "none":
        if settings.shift == "blank":
            other = _encode(processor, prompts, [[counterfactual(im) for im in ims] for ims in image_lists])
        else:
            other = _encode(processor, [_without_images(p) for p in prompts], None)
        length = max(batch["input_ids"].shape[1], other["input_ids"].shape[1])
        batch, other = _left_pad(batch, length, pad), _left_pad(other, length, pad)
        merged = {}
        for key, value in batch.items():
            if key in other and isinstance(value, torch.Tensor):
                merged[key] = torch.cat([value, other[key]])
            else:
                merged[key] = value  # pixels of the removed images do not exist
        batch = merged
        completion_ids = list(completion_ids) * 2
    width = max(len(c) for c in completion_ids)
    completion = torch.full((len(completion_ids), width), pad, dtype=torch.long)
    mask = torch.zeros(len(completion_ids), width, dtype=torch.long)
    for i, ids in enumerate(completion_ids):
        completion[i, : len(ids)] = torch.tensor(list(ids))
        mask[i, : len(ids)] = 1
    prompt_len = batch["input_ids"].shape[1]
    inputs = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor) and value.dim() == 2 and value.shape[1] == prompt_len:
            extra = completion if key == "input_ids" else (mask if key == "attention_mask" else torch.zeros_like(mask))
            value = torch.cat([value, extra.to(value.dtype)], dim=1)
        inputs[key] = value.to(device) if isinstance(value, torch.Tensor) else value
    vision_mask = inputs["input_ids"] == image_token
    capture = VisualScoreCapture(model, settings.score_type)
    shift = HiddenShiftCapture(model) if settings.shift != "none" else None
    was_training = model.training
    model.eval()
    with capture.record(vision_mask, width), (shift.record(width) if shift else nullcontext()):
        logits = model(**inputs, logits_to_keep=width + 1).logits
    model.train(was_training)
    scores = capture.scores[:n]
    entropies = token_entropy(logits[:n, :-1] / max(settings.temperature, 1e-6))
    valid = mask[:n].bool().to(device)
    weights = pepo_token_weights(scores, entropies, valid, settings.gate_alpha, settings.gate_temperature,
                                 no_image_rows=rows_without_image(vision_mask[:n]))
    out = []
    for i in range(n):
        c = len(completion_ids[i])
        out.append({
            "similarity": scores[i, :c].tolist(),
            "entropy": entropies[i, :c].tolist(),
            "weight": weights[i, :c].tolist(),
            "layer_shift": shift.shifts[:, i, :c].cpu() if shift else None,
        })
    return out

