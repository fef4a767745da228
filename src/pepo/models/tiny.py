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

Families (:data:`SUPPORTED_FAMILIES`, dispatched by :func:`build_tiny_model`): Qwen2.5-VL and Qwen2-VL
(share one tokenizer layout), InternVL (InternVL3), Idefics3, SmolVLM (needs ``num2words``), Gemma 3 and
LLaVA-OneVision. Every family other than Qwen needs its own tokenizer,
``train_tiny_tokenizer(corpus, family=...)``: its special tokens and chat format are in
:data:`TOKENIZER_LAYOUTS`. All image processors are the PIL ("...ImageProcessorPil") variants.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from pepo.models.loading import without_video_processor
from pepo.models.video_config import write_video_processor_config

__all__ = [
    "QWEN_SPECIAL_TOKENS",
    "REASONING_TOKENS",
    "QWEN_CHAT_TEMPLATE",
    "SUPPORTED_FAMILIES",
    "TinyVLMSpec",
    "TOKENIZER_LAYOUTS",
    "TokenizerLayout",
    "tokenizer_layout",
    "train_tiny_tokenizer",
    "build_tiny_qwen2_5_vl",
    "build_tiny_qwen2_vl",
    "build_tiny_internvl",
    "build_tiny_idefics3",
    "build_tiny_smolvlm",
    "build_tiny_gemma3",
    "build_tiny_llava_onevision",
    "build_tiny_model",
    "save_tiny",
    "write_video_processor_config",
    "VLLM_TINY_SPEC",
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

SUPPORTED_FAMILIES: tuple[str, ...] = (
    "qwen2_5_vl", "qwen2_vl", "internvl", "idefics3", "smolvlm", "gemma3", "llava_onevision",
)

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


def _chat_template(open_turn: str, image: str, video: str, close_turn: str, generation_prompt: str,
                   prefix: str = "", system_into_first_turn: bool = False) -> str:
    """A Jinja chat template: ``prefix``, then per message ``open_turn`` (a Jinja expression block), the
    content (a string, or a list of {"type": "text"|"image"|"video"} parts rendered *in order*),
    ``close_turn``; ``generation_prompt`` if ``add_generation_prompt``. With ``system_into_first_turn`` a
    leading system message is prepended (+ a blank line) to the first turn's content instead (Gemma)."""
    body = (
        "{%- if message['content'] is string -%}"
        "{{- message['content'] -}}"
        "{%- else -%}"
        "{%- for part in message['content'] -%}"
        "{%- if part['type'] in ('image', 'image_url') or (part['type'] is not defined and 'image' in part) -%}"
        "{{- " + repr(image) + " -}}"
        "{%- elif part['type'] == 'video' or (part['type'] is not defined and 'video' in part) -%}"
        "{{- " + repr(video) + " -}}"
        "{%- elif 'text' in part -%}"
        "{{- part['text'] -}}"
        "{%- endif -%}"
        "{%- endfor -%}"
        "{%- endif -%}"
    )
    if system_into_first_turn:
        head = (
            "{%- if messages and messages[0]['role'] == 'system' -%}"
            "{%- if messages[0]['content'] is string -%}{%- set system = messages[0]['content'] + '\\n\\n' -%}"
            "{%- else -%}{%- set system = messages[0]['content'][0]['text'] + '\\n\\n' -%}{%- endif -%}"
            "{%- set loop_messages = messages[1:] -%}"
            "{%- else -%}{%- set system = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
        )
        loop = "{%- for message in loop_messages -%}" + open_turn + "{%- if loop.first -%}{{- system -}}{%- endif -%}"
    else:
        head = ""
        loop = "{%- for message in messages -%}" + open_turn
    return (
        head + prefix + loop + body + "{{- " + repr(close_turn) + " -}}" + "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- " + repr(generation_prompt) + " -}}{%- endif -%}"
    )


_IM_OPEN = "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
# Idefics3 / SmolVLM turns: "User: text<image><end_of_utterance>\n" ("User:" directly before a leading image).
_IDEFICS_OPEN = (
    "{{- message['role'] | capitalize -}}"
    "{%- if message['content'] is not string and message['content'] and message['content'][0]['type'] == 'image' -%}"
    "{{- ':' -}}{%- else -%}{{- ': ' -}}{%- endif -%}"
)
_GEMMA_OPEN = "{{- '<start_of_turn>' + ('model' if message['role'] == 'assistant' else message['role']) + '\\n' -}}"
# SmolVLM is Idefics3's architecture: the same turn format and processor-named tokens
_IDEFICS_TEMPLATE = _chat_template(
    _IDEFICS_OPEN, "<image>", "<video>", "<end_of_utterance>\n", "Assistant:", prefix="{{- bos_token -}}"
)
_IDEFICS_NAMED_TOKENS = (
            ("image_token", "<image>"),
            ("fake_image_token", "<fake_token_around_image>"),
            ("global_image_token", "<global-img>"),
            ("end_of_utterance_token", "<end_of_utterance>"),
)


@dataclass(frozen=True)
class TokenizerLayout:
    """The special tokens and chat format of one model family's tiny tokenizer.

    ``special_tokens`` get ids 0..n-1 in this order. ``named_tokens`` are (attribute, token) pairs that the
    tokenizer exposes as ``tokenizer.<attribute>`` / ``tokenizer.<attribute>_id`` (transformers'
    model-specific special tokens; the family's processor reads them). ``image_token`` is the token the
    *model* replaces by vision features (what ``input_ids == image_token_id`` must mark); the processor
    expands each image part of the chat template into a run of it.
    """

    special_tokens: tuple[str, ...]
    pad_token: str
    eos_token: str
    image_token: str
    chat_template: str
    bos_token: str | None = None
    named_tokens: tuple[tuple[str, str], ...] = ()


_QWEN_LAYOUT = TokenizerLayout(QWEN_SPECIAL_TOKENS, "<|endoftext|>", "<|im_end|>", "<|image_pad|>", QWEN_CHAT_TEMPLATE)

#: family -> tokenizer layout (special tokens, named multimodal tokens, chat template). Token strings and
#: turn formats follow the real checkpoints' (InternVL3 and LLaVA-OneVision-Qwen2 use Qwen2's ChatML;
#: Idefics3 "User:...<end_of_utterance>"; SmolVLM the same behind <|im_start|>; Gemma 3 <start_of_turn>),
#: trimmed to what the tiny models need. Unlike the real templates, image parts are rendered where they
#: occur in the content list (the real LLaVA-OneVision template moves images before the text).
TOKENIZER_LAYOUTS: dict[str, TokenizerLayout] = {
    "qwen2_5_vl": _QWEN_LAYOUT,
    "qwen2_vl": _QWEN_LAYOUT,
    "internvl": TokenizerLayout(
        special_tokens=("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>"),
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>",
        image_token="<IMG_CONTEXT>",
        # InternVLProcessor expands each <IMG_CONTEXT> placeholder to <img> + <IMG_CONTEXT> * n + </img>.
        chat_template=_chat_template(
            _IM_OPEN, "<IMG_CONTEXT>\n", "<video>\n", "<|im_end|>\n", "<|im_start|>assistant\n"
        ),
        named_tokens=(
            ("start_image_token", "<img>"),
            ("end_image_token", "</img>"),
            ("context_image_token", "<IMG_CONTEXT>"),
            ("video_token", "<video>"),
        ),
    ),
    "idefics3": TokenizerLayout(
        special_tokens=(
            "<|end_of_text|>", "<|begin_of_text|>", "<end_of_utterance>",
            "<fake_token_around_image>", "<image>", "<global-img>",
        ),
        pad_token="<|end_of_text|>",
        eos_token="<end_of_utterance>",
        bos_token="<|begin_of_text|>",
        image_token="<image>",
        chat_template=_IDEFICS_TEMPLATE,
        named_tokens=_IDEFICS_NAMED_TOKENS,
    ),
    "smolvlm": TokenizerLayout(
        special_tokens=(
            "<|endoftext|>", "<|im_start|>", "<end_of_utterance>",
            "<fake_token_around_image>", "<image>", "<global-img>", "<video>",
        ),
        pad_token="<|endoftext|>",
        eos_token="<end_of_utterance>",
        bos_token="<|im_start|>",
        image_token="<image>",
        chat_template=_IDEFICS_TEMPLATE,
        named_tokens=_IDEFICS_NAMED_TOKENS + (("video_token", "<video>"),),
    ),
    "gemma3": TokenizerLayout(
        special_tokens=(
            "<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>",
            "<start_of_image>", "<end_of_image>", "<image_soft_token>",
        ),
        pad_token="<pad>",
        # Real Gemma 3 tokenizers say eos=<eos> and stop generation on <end_of_turn> through the generation
        # config; here eos *is* <end_of_turn>, so TRL's completion mask ends at the end of the turn.
        eos_token="<end_of_turn>",
        bos_token="<bos>",
        image_token="<image_soft_token>",
        # Gemma3Processor expands each <start_of_image> to "\n\n<start_of_image>" + <image_soft_token> * n +
        # "<end_of_image>\n\n"; the model replaces the soft tokens.
        chat_template=_chat_template(
            _GEMMA_OPEN, "<start_of_image>", "", "<end_of_turn>\n", "<start_of_turn>model\n",
            prefix="{{- bos_token -}}", system_into_first_turn=True,
        ),
        named_tokens=(
            ("boi_token", "<start_of_image>"),
            ("eoi_token", "<end_of_image>"),
            ("image_token", "<image_soft_token>"),
        ),
    ),
    "llava_onevision": TokenizerLayout(
        special_tokens=("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"),
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>",
        image_token="<image>",
        chat_template=_chat_template(_IM_OPEN, "<image>\n", "<video>\n", "<|im_end|>\n", "<|im_start|>assistant\n"),
        named_tokens=(("image_token", "<image>"), ("video_token", "<video>")),
    ),
}


def _family_key(family: str) -> str:
    return family.lower().replace("-", "_").replace(".", "_")


def tokenizer_layout(family: str) -> TokenizerLayout:
    """The :class:`TokenizerLayout` of ``family`` (a key of :data:`TOKENIZER_LAYOUTS`)."""
    layout = TOKENIZER_LAYOUTS.get(_family_key(family))
    if layout is None:
        raise ValueError(f"no tokenizer layout for family {family!r}; known: {', '.join(TOKENIZER_LAYOUTS)}")
    return layout


def train_tiny_tokenizer(corpus: Iterable[str] | None = None, vocab_size: int = 512, *, family: str = "qwen2_5_vl"):
    """Train a byte-level BPE tokenizer (HF ``tokenizers``) on ``corpus`` and wrap it for transformers.

    The vocabulary is the 256-symbol byte alphabet, the family's special tokens (single tokens; for the
    default Qwen families :data:`QWEN_SPECIAL_TOKENS`, ids 0..6), BPE merges up to ``vocab_size``, then the
    non-special added tokens :data:`REASONING_TOKENS` (so ``len(tokenizer) == vocab_size + 4`` when the
    corpus supports enough merges). Any text round-trips through encode/decode (byte level;
    ``clean_up_tokenization_spaces=False``).

    Qwen families: pad = ``<|endoftext|>``, eos = ``<|im_end|>``, chat template = :data:`QWEN_CHAT_TEMPLATE`.
    Other families (``family=`` one of :data:`TOKENIZER_LAYOUTS`) get their model's special tokens, named
    multimodal tokens (e.g. ``tokenizer.context_image_token`` for InternVL, ``boi_token`` / ``image_token``
    for Gemma 3: the attributes their transformers processors read), pad/eos/bos and a chat template in the
    family's own turn format; see :class:`TokenizerLayout`. Padding and truncation sides = left (required by
    TRL's GRPOTrainer, see the comment in the code).

    Args:
        corpus: training texts; ``None`` uses a small built-in corpus about counting shapes.
        vocab_size: BPE vocabulary size including the byte alphabet and the special tokens
            (>= 256 + number of special tokens + 1; 264 for the Qwen layout).
        family: whose special tokens and chat template to use (default: Qwen2.5-VL's, as before).
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    layout = tokenizer_layout(family)
    texts = list(_DEFAULT_CORPUS if corpus is None else corpus)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    min_size = len(alphabet) + len(layout.special_tokens) + 1
    if vocab_size < min_size:
        raise ValueError(f"vocab_size must be >= {min_size} (byte alphabet + special tokens), got {vocab_size}")

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=list(layout.special_tokens),
        initial_alphabet=alphabet,
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)

    extra: dict = {}
    if layout.bos_token is not None:
        extra["bos_token"] = layout.bos_token
    if layout.named_tokens:
        # Model-specific named special tokens: tokenizer.<name> / tokenizer.<name>_id, saved with the tokenizer.
        extra["model_specific_special_tokens"] = dict(layout.named_tokens)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        pad_token=layout.pad_token,
        eos_token=layout.eos_token,
        clean_up_tokenization_spaces=False,
        model_max_length=4096,
        # Left padding, as TRL uses when it loads a processor itself. GRPOTrainer re-runs the processor with
        # padding=True for the training forward and pairs its `mm_token_type_ids` with *left*-padded prompt
        # ids: with right padding, prompts of different lengths crash Qwen's rope-index computation.
        padding_side="left",
        truncation_side="left",
        **extra,
    )
    # The BPE trainer registered the layout's special tokens as special added tokens (ids 0..n-1: never
    # split, dropped by skip_special_tokens). The reasoning tags are added as *normal* tokens, so they survive
    # decoding with skip_special_tokens=True (reward functions parse them).
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in REASONING_TOKENS])
    tokenizer.chat_template = layout.chat_template
    return tokenizer


@dataclass(frozen=True)
class TinyVLMSpec:
    """Sizes of a tiny vision-language model (described for the Qwen2-VL / Qwen2.5-VL layout; the other
    families use the same fields, see the comment above :func:`build_tiny_internvl`).

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

    def validate(self, mrope: bool = True) -> None:
        """Check the sizes fit together; ``mrope=False`` skips the multimodal-RoPE check (non-Qwen families)."""
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError("hidden_size must divide by num_heads, and num_heads by num_kv_heads")
        if mrope and sum(self.mrope_section) * 2 != self.head_dim:
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


# --------------------------------------------------------------------------------------------------------
# Other families. Same TinyVLMSpec sizes; each takes a tokenizer from train_tiny_tokenizer(family=...).
# A 112x112 image becomes spec.image_tokens = 16 placeholder tokens in InternVL, Idefics3, SmolVLM and
# Gemma 3 (8x8 patches of 14, merged spatial_merge_size x spatial_merge_size = 2x2 into 4x4: by pixel
# shuffle, or by Gemma 3's average pooling); LLaVA-OneVision keeps every patch and adds its anyres grid:
# 64 (base) + 64 (one grid tile) + 8 (row newlines) = 136. The vision_* fields size the ViT;
# mrope_section, temporal_patch_size and window_size are Qwen-only. Text decoders: Qwen2 (InternVL,
# LLaVA-OneVision), Llama (Idefics3, SmolVLM), Gemma 3; head_dim = hidden_size / num_heads throughout.
# --------------------------------------------------------------------------------------------------------


def _layout_ids(tokenizer, family: str) -> dict[str, int]:
    """ids of the family's special tokens; a clear error if the tokenizer was built for another family."""
    ids = {}
    for tok in tokenizer_layout(family).special_tokens:
        tid = tokenizer.convert_tokens_to_ids(tok)
        if not isinstance(tid, int) or tokenizer.encode(tok, add_special_tokens=False) != [tid]:
            raise ValueError(
                f"tokenizer lacks the single token {tok!r} of the {family} layout; build it with "
                f"train_tiny_tokenizer(..., family={family!r})"
            )
        ids[tok] = tid
    return ids


def _plain_text_config(tokenizer, spec: TinyVLMSpec, family: str, model_type: str, **extra) -> dict:
    """Text-tower kwargs of a Llama/Qwen2/Gemma 3-style decoder sized by ``spec``."""
    layout = tokenizer_layout(family)
    ids = _layout_ids(tokenizer, family)
    config = dict(
        model_type=model_type,
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        head_dim=spec.head_dim,
        max_position_embeddings=spec.max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": spec.rope_theta},
        bos_token_id=ids[layout.bos_token or layout.pad_token],
        eos_token_id=ids[layout.eos_token],
        pad_token_id=ids[layout.pad_token],
        tie_word_embeddings=spec.tie_word_embeddings,
        initializer_range=spec.initializer_range,
    )
    config.update(extra)
    return config


def _seeded_model(model_cls, config, tokenizer, family: str, seed: int):
    """Seeded float32 init (the fork keeps the caller's RNG state) + a generation config from the tokenizer."""
    from transformers import GenerationConfig

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config).to(torch.float32)
    model.eval()
    layout = tokenizer_layout(family)
    ids = _layout_ids(tokenizer, family)
    model.generation_config = GenerationConfig(
        bos_token_id=ids[layout.bos_token or layout.pad_token],
        eos_token_id=ids[layout.eos_token],
        pad_token_id=ids[layout.pad_token],
    )
    return model


def build_tiny_internvl(tokenizer, spec: TinyVLMSpec = TinyVLMSpec(), seed: int = 0):
    """Randomly initialised float32 ``InternVLForConditionalGeneration`` (InternVL3 layout: InternViT +
    pixel-shuffle MLP projector + Qwen2 decoder) and an image-only ``InternVLProcessor``.

    ``tokenizer``: ``train_tiny_tokenizer(..., family="internvl")``. The ViT sees one ``image_size`` tile
    (no dynamic tiling: ``max_patches=1``, so no thumbnail either) of ``patch_size`` patches plus a CLS token
    (dropped, ``vision_feature_select_strategy="default"``); pixel shuffle with ``downsample_ratio =
    1/spatial_merge_size`` gives ``spec.image_tokens`` (16) ``<IMG_CONTEXT>`` tokens per image, between
    ``<img>`` and ``</img>``. The image processor is ``GotOcr2ImageProcessorPil`` (no torchvision).
    """
    from transformers import GotOcr2ImageProcessorPil, InternVLConfig, InternVLForConditionalGeneration
    from transformers import InternVLProcessor

    family = "internvl"
    spec.validate(mrope=False)
    ids = _layout_ids(tokenizer, family)
    vision = dict(
        hidden_size=spec.vision_hidden,
        num_hidden_layers=spec.vision_depth,
        num_attention_heads=spec.vision_heads,
        intermediate_size=spec.vision_intermediate,
        image_size=[spec.image_size, spec.image_size],
        patch_size=[spec.patch_size, spec.patch_size],
        initializer_range=spec.initializer_range,
    )
    config = InternVLConfig(
        vision_config=vision,
        text_config=_plain_text_config(tokenizer, spec, family, "qwen2"),
        image_token_id=ids["<IMG_CONTEXT>"],
        image_seq_length=spec.image_tokens,
        downsample_ratio=1.0 / spec.spatial_merge_size,
        tie_word_embeddings=spec.tie_word_embeddings,
        initializer_range=spec.initializer_range,
    )
    model = _seeded_model(InternVLForConditionalGeneration, config, tokenizer, family, seed)
    image_processor = GotOcr2ImageProcessorPil(
        size={"height": spec.image_size, "width": spec.image_size},
        crop_to_patches=False,
        min_patches=1,
        max_patches=1,
    )
    processor = without_video_processor(InternVLProcessor)(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_length=spec.image_tokens,
        chat_template=tokenizer.chat_template,
    )
    return model, processor


def _idefics_like(family: str, config_cls, model_cls, processor_cls, image_processor_cls, tokenizer,
                  spec: TinyVLMSpec, seed: int):
    spec.validate(mrope=False)
    ids = _layout_ids(tokenizer, family)
    vision = dict(
        hidden_size=spec.vision_hidden,
        intermediate_size=spec.vision_intermediate,
        num_hidden_layers=spec.vision_depth,
        num_attention_heads=spec.vision_heads,
        image_size=spec.image_size,
        patch_size=spec.patch_size,
        initializer_range=spec.initializer_range,
    )
    config = config_cls(
        vision_config=vision,
        text_config=_plain_text_config(tokenizer, spec, family, "llama"),
        image_token_id=ids["<image>"],
        scale_factor=spec.spatial_merge_size,
        pad_token_id=ids[tokenizer_layout(family).pad_token],
        tie_word_embeddings=spec.tie_word_embeddings,
        initializer_range=spec.initializer_range,
    )
    model = _seeded_model(model_cls, config, tokenizer, family, seed)
    # No splitting into sub-images: every image is resized (longest edge) to one image_size tile, padded to
    # a square (pixel_attention_mask marks the padding).
    image_processor = image_processor_cls(
        do_image_splitting=False,
        size={"longest_edge": spec.image_size},
        max_image_size={"longest_edge": spec.image_size},
    )
    # SmolVLMProcessor requires a video_processor argument; its image-only variant takes None.
    video = {"video_processor": None} if "video_processor" in processor_cls.get_attributes() else {}
    processor = without_video_processor(processor_cls)(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=spec.image_tokens,
        chat_template=tokenizer.chat_template,
        **video,
    )
    return model, processor


def build_tiny_idefics3(tokenizer, spec: TinyVLMSpec = TinyVLMSpec(), seed: int = 0):
    """Randomly initialised float32 ``Idefics3ForConditionalGeneration`` (SigLIP-style ViT + pixel-shuffle
    connector with ``scale_factor = spatial_merge_size`` + Llama decoder) and ``Idefics3Processor``.

    ``tokenizer``: ``train_tiny_tokenizer(..., family="idefics3")``. Image splitting is off: each image is one
    ``image_size`` tile -> ``<fake_token_around_image><global-img>`` + ``spec.image_tokens`` (16) ``<image>``
    + ``<fake_token_around_image>``. Image processor: ``Idefics3ImageProcessorPil`` (no torchvision).
    """
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessorPil
    from transformers import Idefics3Processor

    return _idefics_like(
        "idefics3", Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor,
        Idefics3ImageProcessorPil, tokenizer, spec, seed,
    )


def build_tiny_smolvlm(tokenizer, spec: TinyVLMSpec = TinyVLMSpec(), seed: int = 0):
    """Like :func:`build_tiny_idefics3` for SmolVLM (``SmolVLMForConditionalGeneration``, image-only
    ``SmolVLMProcessor``; tokenizer from ``train_tiny_tokenizer(..., family="smolvlm")``).

    Raises:
        ImportError: ``num2words`` is not installed (transformers' SmolVLMProcessor requires it).
    """
    from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration, SmolVLMImageProcessorPil
    from transformers import SmolVLMProcessor

    try:
        import num2words  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            "the smolvlm family needs the `num2words` package (transformers' SmolVLMProcessor refuses to "
            "start without it): pip install num2words"
        ) from exc
    return _idefics_like(
        "smolvlm", SmolVLMConfig, SmolVLMForConditionalGeneration, SmolVLMProcessor,
        SmolVLMImageProcessorPil, tokenizer, spec, seed,
    )


def build_tiny_gemma3(tokenizer, spec: TinyVLMSpec = TinyVLMSpec(), seed: int = 0):
    """Randomly initialised float32 ``Gemma3ForConditionalGeneration`` (SigLIP ViT + average pooling to
    ``mm_tokens_per_image`` + Gemma 3 decoder) and ``Gemma3Processor``.

    ``tokenizer``: ``train_tiny_tokenizer(..., family="gemma3")``. ``mm_tokens_per_image =
    spec.image_tokens`` (16: the 8x8 patch grid average-pooled 2x2); each ``<start_of_image>`` of the prompt
    becomes ``\n\n<start_of_image>`` + 16 ``<image_soft_token>`` + ``<end_of_image>\n\n``. Like Gemma 3 the
    decoder mixes sliding-window (64 tokens here) and full attention layers (all sliding but the last), and
    attends bidirectionally within an image given ``token_type_ids`` (the processor returns them, TRL passes
    them on).

    Two Gemma 3 quirks: ``embed_tokens`` multiplies *text* embeddings by sqrt(hidden_size) (the projected
    image features are not scaled), so hidden state 0 is the scaled embedding, as both
    ``output_hidden_states`` and PEPO's hooks see it; and the processor's ``image_token`` is the text
    placeholder ``<start_of_image>`` while the model replaces ``<image_soft_token>`` (``config.image_token_id``,
    ``tokenizer.image_token``), which :func:`pepo.models.loading.image_token_id` accounts for.
    """
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessorPil
    from transformers import Gemma3Processor

    family = "gemma3"
    spec.validate(mrope=False)
    ids = _layout_ids(tokenizer, family)
    vision = dict(
        model_type="siglip_vision_model",
        hidden_size=spec.vision_hidden,
        intermediate_size=spec.vision_intermediate,
        num_hidden_layers=spec.vision_depth,
        num_attention_heads=spec.vision_heads,
        image_size=spec.image_size,
        patch_size=spec.patch_size,
        vision_use_head=False,
    )
    layer_types = ["sliding_attention"] * (spec.num_layers - 1) + ["full_attention"]
    text = _plain_text_config(
        tokenizer, spec, family, "gemma3_text",
        query_pre_attn_scalar=spec.head_dim,
        sliding_window=64,
        layer_types=layer_types,
        rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": spec.rope_theta},
            "full_attention": {"rope_type": "default", "rope_theta": spec.rope_theta},
        },
    )
    config = Gemma3Config(
        text_config=text,
        vision_config=vision,
        mm_tokens_per_image=spec.image_tokens,
        boi_token_index=ids["<start_of_image>"],
        eoi_token_index=ids["<end_of_image>"],
        image_token_index=ids["<image_soft_token>"],
        initializer_range=spec.initializer_range,
        tie_word_embeddings=spec.tie_word_embeddings,
    )
    model = _seeded_model(Gemma3ForConditionalGeneration, config, tokenizer, family, seed)
    image_processor = Gemma3ImageProcessorPil(
        size={"height": spec.image_size, "width": spec.image_size}, do_pan_and_scan=False
    )
    processor = Gemma3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=tokenizer.chat_template,
        image_seq_length=spec.image_tokens,
    )
    return model, processor


def build_tiny_llava_onevision(tokenizer, spec: TinyVLMSpec = TinyVLMSpec(), seed: int = 0):
    """Randomly initialised float32 ``LlavaOnevisionForConditionalGeneration`` (SigLIP ViT + 2-layer MLP
    projector + Qwen2 decoder, anyres) and an image-only ``LlavaOnevisionProcessor``.

    ``tokenizer``: ``train_tiny_tokenizer(..., family="llava_onevision")``. Anyres with a tiny grid: the
    pinpoints are 1x1, 1x2, 2x1 and 2x2 tiles of ``image_size``; an image is the base tile (all
    (image_size/patch_size)^2 = 64 patch features, no merging) plus its best-fitting grid of tiles, unpadded,
    plus one newline feature per row. A square ``image_size`` image therefore takes 64 + 64 + 8 = **136**
    ``<image>`` tokens (larger or non-square images more, up to ``anyres_max_9``'s limit).
    """
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration
    from transformers import LlavaOnevisionImageProcessorPil, LlavaOnevisionProcessor

    family = "llava_onevision"
    spec.validate(mrope=False)
    ids = _layout_ids(tokenizer, family)
    s = spec.image_size
    pinpoints = [[s, s], [s, 2 * s], [2 * s, s], [2 * s, 2 * s]]
    vision = dict(
        model_type="siglip_vision_model",
        hidden_size=spec.vision_hidden,
        intermediate_size=spec.vision_intermediate,
        num_hidden_layers=spec.vision_depth,
        num_attention_heads=spec.vision_heads,
        image_size=s,
        patch_size=spec.patch_size,
        vision_use_head=False,
    )
    config = LlavaOnevisionConfig(
        vision_config=vision,
        text_config=_plain_text_config(tokenizer, spec, family, "qwen2"),
        image_token_index=ids["<image>"],
        video_token_index=ids["<video>"],
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        image_grid_pinpoints=pinpoints,
        vision_aspect_ratio="anyres_max_9",
        tie_word_embeddings=spec.tie_word_embeddings,
        initializer_range=spec.initializer_range,
    )
    model = _seeded_model(LlavaOnevisionForConditionalGeneration, config, tokenizer, family, seed)
    image_processor = LlavaOnevisionImageProcessorPil(size={"height": s, "width": s}, image_grid_pinpoints=pinpoints)
    processor = without_video_processor(LlavaOnevisionProcessor)(
        image_processor=image_processor,
        tokenizer=tokenizer,
        num_image_tokens=(s // spec.patch_size) ** 2,
        vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9",
        chat_template=tokenizer.chat_template,
    )
    return model, processor


_BUILDERS = {
    "qwen2_5_vl": build_tiny_qwen2_5_vl,
    "qwen2_vl": build_tiny_qwen2_vl,
    "internvl": build_tiny_internvl,
    "idefics3": build_tiny_idefics3,
    "smolvlm": build_tiny_smolvlm,
    "gemma3": build_tiny_gemma3,
    "llava_onevision": build_tiny_llava_onevision,
}


def build_tiny_model(family: str, tokenizer, spec: TinyVLMSpec = TinyVLMSpec(), seed: int = 0):
    """Dispatch to the tiny builder of ``family`` (one of :data:`SUPPORTED_FAMILIES`).

    ``tokenizer`` must come from ``train_tiny_tokenizer(..., family=family)`` (both Qwen families share
    one layout); a tokenizer of another family is refused with a ValueError naming the fix.
    """
    key = _family_key(family)
    builder = _BUILDERS.get(key)
    if builder is None:
        raise NotImplementedError(
            f"No tiny builder for model family {family!r}. Supported families: {', '.join(SUPPORTED_FAMILIES)}."
        )
    return builder(tokenizer, spec=spec, seed=seed)


#: A tiny spec vLLM's CPU attention accepts: head_dim 32 (vLLM-CPU needs >= 32; the default spec has 16),
#: multimodal-RoPE sections summing to 16, otherwise the default sizes.
VLLM_TINY_SPEC = TinyVLMSpec(hidden_size=128, num_heads=4, num_kv_heads=2, intermediate_size=256,
                             mrope_section=(4, 6, 6))

def save_tiny(model, processor, path) -> Path:
    """``save_pretrained`` the model and processor into ``path`` (created); reload them with
    :func:`pepo.models.loading.load_model_and_processor`. Returns the directory.

    For families with a video processor (Qwen2-VL, Qwen2.5-VL, InternVL, SmolVLM, LLaVA-OneVision) the
    folder also gets its ``video_preprocessor_config.json``
    (:func:`pepo.models.video_config.write_video_processor_config`; pepo's image-only processors write it in
    their own ``save_pretrained``), so the stock ``AutoProcessor`` and vLLM load it too."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    write_video_processor_config(processor, path)
    return path


def count_parameters(model) -> int:
    """Number of distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in model.parameters())
