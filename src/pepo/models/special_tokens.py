"""The image/video tokens a policy must never generate, and the sampling settings that ban them.

A completion that contains an image placeholder (Qwen's ``<|image_pad|>``) reaches the next training forward
as part of ``input_ids``; the model then counts one more image token than it has image features and dies
(``Image features and image tokens do not match, tokens: 65, features: 64``). A generated video placeholder or
vision start/end marker breaks the same way (or silently shifts Qwen's 3D rope positions). TRL's transformers
path suppresses only ``config.image_token_id``; its vLLM path suppresses nothing. pepo bans every such token
in sampling, for both backends (:func:`ban_multimodal_tokens`).
"""

from __future__ import annotations

from typing import Any

__all__ = ["multimodal_token_ids", "ban_multimodal_tokens"]

# Config attributes (top level and text sub-config) that hold ids of image/video placeholders or markers.
_CONFIG_ID_ATTRS = (
    "image_token_id", "image_token_index", "video_token_id", "video_token_index",
    "vision_start_token_id", "vision_end_token_id", "vision_token_id",
    "boi_token_index", "eoi_token_index", "boi_token_id", "eoi_token_id",
    "image_start_token_id", "image_end_token_id", "image_context_token_id",
)
# Substrings of processor / tokenizer ``*_token`` attribute names that denote image/video tokens.
_NAME_PARTS = ("image", "video", "vision", "img", "boi", "eoi")


def _configs(model_or_config: Any) -> list[Any]:
    config = getattr(model_or_config, "config", model_or_config)
    found = [config]
    get_text = getattr(config, "get_text_config", None)
    if callable(get_text):
        text = get_text()
        if text is not config:
            found.append(text)
    for name in ("vision_config", "text_config"):
        sub = getattr(config, name, None)
        if sub is not None and sub not in found:
            found.append(sub)
    return found


def multimodal_token_ids(model_or_config: Any, processor: Any) -> list[int]:
    """Sorted ids of every image/video placeholder or marker token of this model + processor.

    Sources: the config's id attributes (``image_token_id``, ``video_token_id``, ``vision_start_token_id``,
    ``boi_token_index``, ...) and every string attribute ``*_token`` of the processor and its tokenizer whose
    name mentions image/video/vision/img/boi/eoi (``image_token``, ``video_token``, ``fake_image_token``,
    ``global_image_token``, ``start_image_token``, ...). A name counts only if it is an added token of the
    tokenizer. The tokenizer's eos/pad tokens are never included (banning them would stop completions from
    ending).
    """
    tokenizer = getattr(processor, "tokenizer", processor)
    added = {int(i): t for t, i in tokenizer.get_added_vocab().items()}
    ids: set[int] = set()
    for cfg in _configs(model_or_config):
        for attr in _CONFIG_ID_ATTRS:
            value = getattr(cfg, attr, None)
            if isinstance(value, int) and not isinstance(value, bool) and value in added:
                ids.add(value)
    owners = [processor] + ([tokenizer] if tokenizer is not processor else [])
    for owner in owners:
        names = set(dir(type(owner))) | set(getattr(owner, "__dict__", {}))
        extra = getattr(owner, "extra_special_tokens", None)
        if isinstance(extra, dict):
            names |= set(extra)
        for name in names:
            if not name.endswith("_token") or not any(part in name for part in _NAME_PARTS):
                continue
            try:
                token = getattr(owner, name, None)
            except Exception:  # a property that needs state the processor does not have
                continue
            if isinstance(token, str):
                tid = tokenizer.convert_tokens_to_ids(token)
                if isinstance(tid, int) and added.get(tid) == token:
                    ids.add(tid)
    keep = {tokenizer.eos_token_id, tokenizer.pad_token_id}
    return sorted(ids - keep)


def ban_multimodal_tokens(generation_kwargs: dict | None, banned: list[int], use_vllm: bool) -> dict:
    """``generation_kwargs`` (TRL's ``GRPOConfig.generation_kwargs``) extended so ``banned`` ids are never sampled.

    transformers ``generate``: ``suppress_tokens`` (union with any the user set; TRL's own default, the image
    token, is among ``banned``). vLLM ``SamplingParams``: ``logit_bias`` of -100 on each id (vLLM clamps bias
    to [-100, 100]; after it, the id's probability is ~e^-100 times another token's, i.e. zero in float32) unioned
    with the user's. A user's ``allowed_token_ids`` is left alone: TRL passes these keys straight through.
    """
    kwargs = dict(generation_kwargs or {})
    if not banned:
        return kwargs
    if use_vllm:
        bias = {int(k): float(v) for k, v in (kwargs.get("logit_bias") or {}).items()}
        for tid in banned:
            bias[tid] = -100.0
        kwargs["logit_bias"] = bias
    else:
        kwargs["suppress_tokens"] = sorted(set(kwargs.get("suppress_tokens") or []) | set(banned))
    return kwargs


def ban_multimodal_tokens_in_args(args: Any, model: Any, processing_class: Any) -> None:
    """Set ``args.generation_kwargs`` so that neither sampling backend can emit an image/video token.

    ``model``: a model object or a checkpoint path/hub id (as ``GRPOTrainer`` accepts); ``processing_class``:
    the processor (None: loaded from ``model`` like TRL does). Text-only tokenizers ban nothing. Called by
    ``PEPOTrainer.__init__`` before TRL builds its generation config / vLLM sampling parameters from ``args``.
    """
    if args is None:
        return
    if processing_class is None:
        from pepo.models.loading import load_processor

        name = model if isinstance(model, str) else getattr(getattr(model, "config", None), "_name_or_path", None)
        if not name:
            return
        processing_class = load_processor(name)
    if getattr(processing_class, "tokenizer", None) is None:  # a plain tokenizer: no images
        return
    config = model
    if isinstance(model, str):
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(model)
    banned = multimodal_token_ids(config, processing_class)
    args.generation_kwargs = ban_multimodal_tokens(args.generation_kwargs, banned, bool(getattr(args, "use_vllm", False)))
