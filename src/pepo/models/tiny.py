"""Tiny, randomly initialised vision-language models of real architectures, for tests and offline demos.

Nothing here touches the network: the tokenizer is a byte-level BPE trained in code on a few sentences,
the model is built from a config in code, and the processor is assembled from transformers classes.

Example::

    from pepo.models.tiny import train_tiny_tokenizer, build_tiny_qwen2_5_vl, save_tiny
    from pepo.models.loading import load_model_and_processor

    tok = train_tiny_tokenizer(["how many red shapes ?", "<think>count</think><answer>3</answer>"])
    model, processor = build_tiny_qwen2_5_vl(tok)
    save_tiny(model, processor, "/tmp/tiny-qwen2.5-vl")
    model, processor = load_model_and_processor("/tmp/tiny-qwen2.5-vl")

The processor is image-only (see :func:`pepo.models.loading.without_video_processor`: transformers' video
processors need torchvision, which CPU installs often lack).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from pepo.models.loading import without_video_processor

__all__ = [
    "QWEN_SPECIAL_TOKENS",
    "REASONING_TOKENS",
    "QWEN_CHAT_TEMPLATE",
    "SUPPORTED_FAMILIES",
    "TinyVLMSpec",
    "train_tiny_tokenizer",
    "build_tiny_qwen2_5_vl",
    "build_tiny_qwen2_vl",
    "build_tiny_model",
    "save_tiny",
    "count_parameters",
]

#: Qwen2-VL / Qwen2.5-VL special tokens; the tiny tokenizer gives them ids 0..6 in this order.
QWEN_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",  # pad (and Qwen's bos)
    "<|im_start|>",
    "<|im_end|>",  # eos / end of turn
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",  # image placeholder, expanded by the processor to one token per merged patch
    "<|video_pad|>",
)
#: Normal (non-special) added tokens so that a formatted answer is a handful of tokens.
REASONING_TOKENS: tuple[str, ...] = ("<think>", "</think>", "<answer>", "</answer>")

#: Qwen-style chat template. `content` is a string or a list of {"type": "text"|"image"|"video"} parts;
#: images render as <|vision_start|><|image_pad|><|vision_end|>. Unlike Qwen's own template it adds no
#: default system prompt (keeps tiny-model prompts short); a system message is rendered if given.
QWEN_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}"
    "{{- message['content'] -}}"
    "{%- else -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] in ('image', 'image_url') or (part['type'] is not defined and 'image' in part) -%}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'video' or (part['type'] is not defined and 'video' in part) -%}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}"
    "{%- elif 'text' in part -%}"
    "{{- part['text'] -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- endif -%}"
)

SUPPORTED_FAMILIES: tuple[str, ...] = ("qwen2_5_vl", "qwen2_vl")
_LATER_FAMILIES: tuple[str, ...] = ("idefics3", "smolvlm", "gemma3", "llava_onevision", "internvl")

_DEFAULT_CORPUS: tuple[str, ...] = (
    "how many red shapes ?",
    "how many blue circles are there ?",
    "what color is the square ?",
    "count the green triangles in the image .",
    "<think>i see three red shapes</think><answer>3</answer>",
    "<think>there are two circles</think><answer>2</answer>",
    "the answer is 0 1 2 3 4 5 6 7 8 9 10",
    "You are a helpful assistant.",
)


def train_tiny_tokenizer(corpus: Iterable[str] | None = None, vocab_size: int = 512):
    """Train a byte-level BPE tokenizer (HF ``tokenizers``) on ``corpus`` and wrap it for transformers.

    The vocabulary is the 256-symbol byte alphabet, :data:`QWEN_SPECIAL_TOKENS` (single special tokens),
    BPE merges up to ``vocab_size``, then the non-special added tokens :data:`REASONING_TOKENS`
    (so ``len(tokenizer) == vocab_size + 4`` when the corpus supports enough merges). Any text round-trips
    through encode/decode (byte level; ``clean_up_tokenization_spaces=False``).

    pad = ``<|endoftext|>``, eos = ``<|im_end|>``, chat template = :data:`QWEN_CHAT_TEMPLATE`,
    padding and truncation sides = left (required by TRL's GRPOTrainer, see the comment in the code).

    Args:
        corpus: training texts; ``None`` uses a small built-in corpus about counting shapes.
        vocab_size: BPE vocabulary size including the byte alphabet and the special tokens (>= 263 + 1).
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = list(_DEFAULT_CORPUS if corpus is None else corpus)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    min_size = len(alphabet) + len(QWEN_SPECIAL_TOKENS) + 1
    if vocab_size < min_size:
        raise ValueError(f"vocab_size must be >= {min_size} (byte alphabet + special tokens), got {vocab_size}")

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=list(QWEN_SPECIAL_TOKENS),
        initial_alphabet=alphabet,
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>",
        clean_up_tokenization_spaces=False,
        model_max_length=4096,
        # Left padding, as TRL uses when it loads a processor itself. GRPOTrainer re-runs the processor with
        # padding=True for the training forward and pairs its `mm_token_type_ids` with *left*-padded prompt
        # ids: with right padding, prompts of different lengths crash Qwen's rope-index computation.
        padding_side="left",
        truncation_side="left",
    )
    # The BPE trainer registered QWEN_SPECIAL_TOKENS as special added tokens (ids 0..6: never split,
    # dropped by skip_special_tokens). The reasoning tags are added as *normal* tokens, so they survive
    # decoding with skip_special_tokens=True (reward functions parse them).
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in REASONING_TOKENS])
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    return tokenizer


@dataclass(frozen=True)
class TinyVLMSpec:
    """Sizes of a tiny vision-language model (Qwen2-VL / Qwen2.5-VL layout).

    With the defaults a ``image_size x image_size`` = 112x112 image is cut into (112/14)^2 = 64 patches of
    ``patch_size`` = 14 (x ``temporal_patch_size`` = 2 frames, Qwen duplicates a still image), merged
    2x2 (``spatial_merge_size``) into **16 image tokens**; ``image_grid_thw`` = [1, 8, 8] and
    ``pixel_values`` has shape [64, 3*2*14*14 = 1176]. The whole Qwen2.5-VL model has 413,376
    parameters with the 374-token vocabulary of the built-in corpus (tied embeddings: +64 per extra token,
    ~0.42M at the full 516 tokens); Qwen2-VL 397,056. ``tests/test_tiny_model.py`` asserts 0.3M-1M.

    Text tower: ``num_layers`` decoder layers of width ``hidden_size`` with ``num_heads`` query heads and
    ``num_kv_heads`` key/value heads (GQA; head_dim = hidden_size / num_heads = 16), SwiGLU MLP of width
    ``intermediate_size``, multimodal RoPE sections ``mrope_section`` (must sum to head_dim / 2).
    Vision tower: ``vision_depth`` ViT blocks of width ``vision_hidden`` with ``vision_heads`` heads and
    MLP width ``vision_intermediate``; Qwen2.5-VL windowed attention with ``window_size`` pixels (112 =
    the whole image here) and full attention in the last block.
    """

    hidden_size: int = 64
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 128
    mrope_section: tuple[int, int, int] = (2, 3, 3)
    max_position_embeddings: int = 2048
    rope_theta: float = 10000.0
    vision_depth: int = 2
    vision_hidden: int = 64
    vision_heads: int = 4
    vision_intermediate: int = 128
    patch_size: int = 14
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    window_size: int = 112
    image_size: int = 112
    tie_word_embeddings: bool = True
    # transformers' default 0.02 is tuned for 1-4k-wide models. At width 64 it leaves the vision merger's
    # output almost constant across images (between-image std 0.016 vs 0.058 overall, measured), and a
    # warm start then never leaves the answer prior; ~1/sqrt(width) learns "how many shapes" in ~150 steps.
    initializer_range: float = 0.1

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def image_tokens(self) -> int:
        """Placeholder tokens one ``image_size`` x ``image_size`` image expands to."""
        side = self.image_size // self.patch_size
        return (side // self.spatial_merge_size) ** 2

    def validate(self) -> None:
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError("hidden_size must divide by num_heads, and num_heads by num_kv_heads")
        if sum(self.mrope_section) * 2 != self.head_dim:
            raise ValueError(f"mrope_section {self.mrope_section} must sum to head_dim/2 = {self.head_dim // 2}")
        if self.vision_hidden % self.vision_heads:
            raise ValueError("vision_hidden must divide by vision_heads")
        factor = self.patch_size * self.spatial_merge_size
        if self.image_size % factor:
            raise ValueError(f"image_size must be a multiple of patch_size*spatial_merge_size = {factor}")


def _token_ids(tokenizer) -> dict[str, int]:
    ids = {}
    for tok in QWEN_SPECIAL_TOKENS:
        tid = tokenizer.convert_tokens_to_ids(tok)
        if not isinstance(tid, int) or tokenizer.encode(tok, add_special_tokens=False) != [tid]:
            raise ValueError(f"tokenizer lacks the single token {tok!r}; build it with train_tiny_tokenizer()")
        ids[tok] = tid
    return ids


def _text_kwargs(tokenizer, spec: TinyVLMSpec, ids: dict[str, int]) -> dict:
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=spec.max_position_embeddings,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": spec.rope_theta,
            "mrope_section": list(spec.mrope_section),
        },
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=spec.tie_word_embeddings,
        initializer_range=spec.initializer_range,
    )


def _finish(model_cls, config, tokenizer, spec: TinyVLMSpec, seed: int, processor_cls):
    from transformers import GenerationConfig, Qwen2VLImageProcessorPil

    # Seeded init on CPU; the fork keeps the caller's global RNG state untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config).to(torch.float32)
    model.eval()
    ids = _token_ids(tokenizer)
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )

    # PIL backend: works without torchvision. Qwen's smart_resize snaps sides to multiples of
    # factor = patch_size * merge_size (28) and scales the area into [min_pixels, max_pixels]. With
    # min_pixels == max_pixels == image_size**2 exactly, its float floor/ceil sends many square sizes to the
    # neighbouring grid (e.g. 300x300 -> 84x84, 30x30 -> 140x140); a margin of half a factor^2 cell on each
    # side (areas come in multiples of factor^2) keeps the target area the only admissible one, so *every
    # square image* becomes exactly image_size x image_size = spec.image_tokens tokens. Non-square images
    # keep roughly that area at their aspect ratio, so their token count differs (pad them to square).
    cell = (spec.patch_size * spec.spatial_merge_size) ** 2
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=spec.image_size**2 - cell // 2,
        max_pixels=spec.image_size**2 + cell // 2,
        patch_size=spec.patch_size,
        temporal_patch_size=spec.temporal_patch_size,
        merge_size=spec.spatial_merge_size,
    )
    # Image-only processor class: the stock one insists on a (torchvision-only) video processor. See
    # pepo.models.loading.without_video_processor; it saves/loads as the stock processor class.
    processor = without_video_processor(processor_cls)(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=tokenizer.chat_template,
    )
    return model, processor


def _qwen_config(config_cls, tokenizer, spec: TinyVLMSpec, vision: dict):
    """A Qwen2-VL-family config whose special-token ids are the tokenizer's."""
    ids = _token_ids(tokenizer)
    return config_cls(
        text_config=_text_kwargs(tokenizer, spec, ids),
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=spec.tie_word_embeddings,
    )


def build_tiny_qwen2_5_vl(tokenizer, spec: TinyVLMSpec = TinyVLMSpec(), seed: int = 0):
    """Randomly initialised float32 ``Qwen2_5_VLForConditionalGeneration`` + ``Qwen2_5_VLProcessor``.

    ``tokenizer`` must contain :data:`QWEN_SPECIAL_TOKENS` (use :func:`train_tiny_tokenizer`); the config's
    vocab size is ``len(tokenizer)`` and its image/video/vision-start/vision-end ids are the tokenizer's.
    Same ``seed`` -> identical weights.
    """
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

    spec.validate()
    vision = dict(
        depth=spec.vision_depth,
        hidden_size=spec.vision_hidden,
        intermediate_size=spec.vision_intermediate,
        num_heads=spec.vision_heads,
        patch_size=spec.patch_size,
        spatial_merge_size=spec.spatial_merge_size,
        temporal_patch_size=spec.temporal_patch_size,
        window_size=spec.window_size,
        initializer_range=spec.initializer_range,
        out_hidden_size=spec.hidden_size,
        fullatt_block_indexes=[spec.vision_depth - 1],
        tokens_per_second=2,
    )
    config = _qwen_config(Qwen2_5_VLConfig, tokenizer, spec, vision)
    return _finish(Qwen2_5_VLForConditionalGeneration, config, tokenizer, spec, seed, Qwen2_5_VLProcessor)


def build_tiny_qwen2_vl(tokenizer, spec: TinyVLMSpec = TinyVLMSpec(), seed: int = 0):
    """Like :func:`build_tiny_qwen2_5_vl` for Qwen2-VL (``Qwen2VLForConditionalGeneration``; same
    tokens and processor format; vision MLP width = ``vision_intermediate``, no windowed attention)."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor

    spec.validate()
    if spec.vision_intermediate % spec.vision_hidden:
        raise ValueError("Qwen2-VL needs vision_intermediate to be a multiple of vision_hidden (mlp_ratio)")
    vision = dict(
        depth=spec.vision_depth,
        embed_dim=spec.vision_hidden,
        hidden_size=spec.hidden_size,
        mlp_ratio=spec.vision_intermediate // spec.vision_hidden,
        num_heads=spec.vision_heads,
        patch_size=spec.patch_size,
        spatial_merge_size=spec.spatial_merge_size,
        temporal_patch_size=spec.temporal_patch_size,
        initializer_range=spec.initializer_range,
    )
    config = _qwen_config(Qwen2VLConfig, tokenizer, spec, vision)
    return _finish(Qwen2VLForConditionalGeneration, config, tokenizer, spec, seed, Qwen2VLProcessor)


_BUILDERS = {"qwen2_5_vl": build_tiny_qwen2_5_vl, "qwen2_vl": build_tiny_qwen2_vl}


def build_tiny_model(family: str, tokenizer, spec: TinyVLMSpec = TinyVLMSpec(), seed: int = 0):
    """Dispatch to the tiny builder of ``family`` (one of :data:`SUPPORTED_FAMILIES`)."""
    key = family.lower().replace("-", "_").replace(".", "_")
    builder = _BUILDERS.get(key)
    if builder is None:
        later = " (planned, not implemented yet)" if key in _LATER_FAMILIES else ""
        raise NotImplementedError(
            f"No tiny builder for model family {family!r}{later}. Supported families: "
            f"{', '.join(SUPPORTED_FAMILIES)}. Planned: {', '.join(_LATER_FAMILIES)}."
        )
    return builder(tokenizer, spec=spec, seed=seed)


def save_tiny(model, processor, path) -> Path:
    """``save_pretrained`` the model and processor into ``path`` (created); reload them with
    :func:`pepo.models.loading.load_model_and_processor`. Returns the directory."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def count_parameters(model) -> int:
    """Number of distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in model.parameters())
