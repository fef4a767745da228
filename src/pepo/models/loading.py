"""Load a vision-language model and its processor through one code path.

The same function loads a real checkpoint (a hub id such as ``Qwen/Qwen2.5-VL-3B-Instruct``) and the tiny
models that :mod:`pepo.models.tiny` saves to a local directory: ``AutoModelForImageTextToText`` +
``AutoProcessor``.

torchvision workaround
----------------------
Qwen2-VL / Qwen2.5-VL processors declare three sub-processors: ``image_processor``, ``tokenizer`` and
``video_processor``. In transformers 5.x the only video processors (``Qwen2VLVideoProcessor`` and
friends) require torchvision, and without torchvision *constructing* or *loading* such a processor fails
even if no video is ever used: ``ProcessorMixin`` class-checks the ``video_processor`` argument against
``VideoProcessorMixin``, which transformers only exports when torchvision is installed (the lookup ends in
``AttributeError: ... VIDEO_PROCESSOR_MAPPING has no attribute '_extra_content'``), and
``AutoVideoProcessor.from_pretrained`` raises "requires `torchvision`".

The images path itself (``Qwen2VLImageProcessorPil``) needs no torchvision. So, where torchvision is
missing, :func:`without_video_processor` derives a subclass of the processor class that simply does not
declare ``video_processor`` as a sub-processor (``get_attributes`` is the single place ProcessorMixin reads
that list from: ``__init__`` checks, ``from_pretrained`` loading and ``save_pretrained`` all go through it).
Everything else (image-token expansion, chat template, tokenizer) is the stock processor code. Passing
``videos=`` to such a processor is unsupported. Where torchvision is installed the stock classes are used.
"""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "load_model_and_processor",
    "load_processor",
    "image_token_id",
    "without_video_processor",
    "torchvision_available",
    "torchvision_error",
    "TorchvisionBroken",
]


class TorchvisionBroken(OSError):
    """torchvision is installed but cannot be imported (usually: built for another torch)."""


def torchvision_error() -> str | None:
    """Why an installed torchvision cannot be imported, with what to do; None if it loads or is absent.

    transformers' ``is_torchvision_available`` only looks for the package, so a torchvision built for a
    different torch (PyPI's CUDA wheel beside ``torch+cpu``: ``operator torchvision::nms does not exist``)
    counts as available and the first transformers module that imports it fails far from the cause. This
    imports it (and the transforms transformers' video processors use) to find out.
    """
    import importlib.util

    try:
        if importlib.util.find_spec("torchvision") is None:
            return None
    except ValueError:  # in sys.modules without a spec
        pass
    try:
        import torchvision  # noqa: F401
        import torchvision.transforms.v2.functional  # noqa: F401
    except Exception as err:  # a broken extension raises RuntimeError/OSError/ImportError
        try:
            from importlib.metadata import version

            installed = f"torchvision {version('torchvision')}"
        except Exception:
            installed = "torchvision"
        return (
            f"{installed} is installed but cannot be imported ({type(err).__name__}: {err}); this usually means "
            f"it was built for another torch than the installed torch {torch.__version__} (e.g. PyPI's CUDA "
            "wheel beside a CPU torch). pepo's image path does not need torchvision: `pip uninstall torchvision`, "
            "or install the build that matches your torch (CPU: `pip install torchvision==<matching version> "
            "--index-url https://download.pytorch.org/whl/cpu`)."
        )
    return None


def torchvision_available() -> bool:
    """Whether torchvision is installed *and imports* (transformers' video processors need it)."""
    import importlib.util

    try:
        if importlib.util.find_spec("torchvision") is None:
            return False
    except ValueError:
        pass
    return torchvision_error() is None


def _check_torchvision() -> None:
    """Raise :class:`TorchvisionBroken` (with the fix) if torchvision is installed but does not load."""
    error = torchvision_error()
    if error is not None:
        raise TorchvisionBroken(error)


_NO_VIDEO_CLASSES: dict[type, type] = {}
_IMAGE_ONLY_SUFFIX = "_ImageOnly"


def __getattr__(name: str):
    """``pepo.models.loading.<ProcessorName>_ImageOnly`` -> ``without_video_processor(<ProcessorName>)``."""
    if name.endswith(_IMAGE_ONLY_SUFFIX):
        import transformers

        base = getattr(transformers, name[: -len(_IMAGE_ONLY_SUFFIX)], None)
        if isinstance(base, type):
            cls = without_video_processor(base)
            if cls is not base:
                return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _AbsentVideoProcessor:
    """Stand-in for the video processor of an image-only processor whose own methods read its settings."""

    num_frames = None
    fps = None

    def __call__(self, *args, **kwargs):
        raise NotImplementedError("image-only processor (no torchvision): videos are not supported")

    def __repr__(self) -> str:
        return "<no video processor>"


def without_video_processor(processor_cls: type) -> type:
    """Return an image-only variant of ``processor_cls`` (cached), or ``processor_cls`` itself if it has no
    ``video_processor`` sub-processor. See the module docstring for why this exists.

    The returned class keeps ``__name__`` of the original so that ``save_pretrained`` writes the stock
    ``"processor_class": "<Original>"`` into ``processor_config.json`` / ``tokenizer_config.json``: a saved
    directory is a standard checkpoint that plain ``AutoProcessor.from_pretrained`` loads wherever
    torchvision is installed.
    """
    if "video_processor" not in processor_cls.get_attributes():
        return processor_cls
    cached = _NO_VIDEO_CLASSES.get(processor_cls)
    if cached is not None:
        return cached

    # Some processors (SmolVLMProcessor) take `video_processor` as a *required* argument: construct them with
    # `video_processor=None` (ProcessorMixin ignores it, it is no declared attribute any more); loading adds it
    # in from_args_and_dict. (__init__ is not wrapped: from_args_and_dict reads the stock __init__'s
    # argument names to decide which saved settings to pass on.)
    video_param = inspect.signature(processor_cls.__init__).parameters.get("video_processor")
    video_required = video_param is not None and video_param.default is inspect.Parameter.empty

    class _ImageOnlyProcessor(processor_cls):  # type: ignore[misc, valid-type]
        if video_required:
            # SmolVLMProcessor.apply_chat_template also reads `self.video_processor.num_frames` / `.fps` as
            # defaults for sampling video frames: a class-level stand-in answers None (not saved, not an
            # attribute of ProcessorMixin's).
            video_processor = _AbsentVideoProcessor()

        @classmethod
        def get_attributes(cls) -> list[str]:
            return [a for a in super().get_attributes() if a != "video_processor"]

        @classmethod
        def from_args_and_dict(cls, args, processor_dict: dict[str, Any], **kwargs):
            # A checkpoint saved where torchvision exists nests a "video_processor" config here; it would be
            # forwarded as an `__init__` kwarg, so drop it (no video support without torchvision anyway).
            processor_dict = {k: v for k, v in processor_dict.items() if k != "video_processor"}
            if video_required:
                processor_dict["video_processor"] = None
            return super().from_args_and_dict(args, processor_dict, **kwargs)

        def __call__(self, *args, **kwargs):
            # ProcessorMixin would silently skip `videos` without a video_processor; fail loudly instead.
            # (Positional order of ProcessorMixin.__call__: images, text, videos, audio.)
            if kwargs.get("videos") is not None or (len(args) > 2 and args[2] is not None):
                raise NotImplementedError(
                    f"this {processor_cls.__name__} is image-only (built without a video processor, since "
                    "transformers' video processors need torchvision); videos are not supported."
                )
            return super().__call__(*args, **kwargs)

        def save_pretrained(self, save_directory, *args, **kwargs):
            # The stock class (where torchvision is installed) and vLLM load a video processor for this
            # family and stop if the folder has no config for one: write it beside the processor's own files.
            # Every save goes through here: save_tiny, the warm start, Trainer's checkpoint-N, the final model.
            from pepo.models.video_config import write_video_processor_config

            result = super().save_pretrained(save_directory, *args, **kwargs)
            write_video_processor_config(self, save_directory)
            return result

    _ImageOnlyProcessor.__name__ = processor_cls.__name__
    # pickle looks classes up by module + __qualname__; the module-level __getattr__ below rebuilds
    # "<Name>_ImageOnly" on demand, so instances pickle (e.g. for datasets' fingerprinting) and unpickle.
    _ImageOnlyProcessor.__qualname__ = f"{processor_cls.__name__}{_IMAGE_ONLY_SUFFIX}"
    _ImageOnlyProcessor.__module__ = __name__
    _ImageOnlyProcessor.__doc__ = (
        f"{processor_cls.__name__} without a video sub-processor (torchvision-free); "
        "see pepo.models.loading.without_video_processor."
    )
    _NO_VIDEO_CLASSES[processor_cls] = _ImageOnlyProcessor
    return _ImageOnlyProcessor


def _looks_like_local_path(name_or_path: str) -> bool:
    """Heuristic: hub ids are ``name`` or ``org/name``; anything else path-shaped is meant to be local."""
    p = str(name_or_path)
    if p.startswith(("/", "./", "../", "~", ".\\", "..\\")) or p in (".", ".."):
        return True
    if os.sep != "/" and os.sep in p:
        return True
    if os.path.splitdrive(p)[0]:
        return True
    return p.count("/") > 1


def _resolve_processor_class(name_or_path: str, trust_remote_code: bool, **hub_kwargs) -> type | None:
    """The transformers processor class a checkpoint would get from AutoProcessor, or None if unknown."""
    from transformers import AutoConfig
    from transformers.processing_utils import ProcessorMixin

    # 1) explicit class recorded in processor_config.json (local directory only; hub ids go through the config)
    local = Path(os.path.expanduser(name_or_path))
    proc_file = local / "processor_config.json"
    if proc_file.is_file():
        try:
            name = json.loads(proc_file.read_text(encoding="utf-8")).get("processor_class")
            if name:
                return ProcessorMixin.get_possibly_dynamic_module(name)
        except (ValueError, AttributeError):
            pass
    # 2) the model type's default processor
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING

    try:
        config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, **hub_kwargs)
    except (OSError, ValueError):
        return None
    try:
        return PROCESSOR_MAPPING[type(config)]
    except KeyError:
        return None


def load_processor(name_or_path: str, trust_remote_code: bool = False, **kwargs):
    """``AutoProcessor.from_pretrained`` with the torchvision-free fallback for processors that declare a
    video sub-processor (Qwen2-VL, Qwen2.5-VL, ...). Extra kwargs go to ``from_pretrained``."""
    _check_torchvision()
    from transformers import AutoProcessor

    if not torchvision_available() and not trust_remote_code:
        cls = _resolve_processor_class(name_or_path, trust_remote_code, **kwargs)
        if cls is not None and "video_processor" in cls.get_attributes():
            return without_video_processor(cls).from_pretrained(name_or_path, **kwargs)
    return AutoProcessor.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, **kwargs)


def load_model_and_processor(
    name_or_path: str,
    torch_dtype: str | torch.dtype = "auto",
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
    padding_side: str | None = "left",
):
    """Load ``(model, processor)`` from a hub id or a local directory.

    Uses ``AutoModelForImageTextToText`` and ``AutoProcessor`` (with the torchvision-free fallback of
    :func:`load_processor`), so a tiny model saved by :func:`pepo.models.tiny.save_tiny` and
    ``Qwen/Qwen2.5-VL-3B-Instruct`` take the same path.

    Args:
        name_or_path: hub id (``org/name``) or a local directory written by ``save_pretrained``.
        torch_dtype: ``"auto"`` (the dtype stored in the checkpoint), a string such as ``"bfloat16"``,
            or a ``torch.dtype``.
        trust_remote_code: forwarded to transformers.
        attn_implementation: e.g. ``"sdpa"``, ``"eager"``, ``"flash_attention_2"``; ``None`` = default.
        padding_side: set on the processor's tokenizer (padding *and* truncation side). ``"left"`` is what
            TRL uses when it loads a processor itself, and GRPOTrainer needs it: it pairs the processor's
            per-token fields (Qwen's ``mm_token_type_ids``) with left-padded prompt ids. ``None`` keeps the
            checkpoint's setting.

    Raises:
        FileNotFoundError: ``name_or_path`` looks like a local path but does not exist.
        OSError: the model or processor could not be loaded (message names the path and the cause).
        TorchvisionBroken: torchvision is installed but does not import (the message says what to do).
    """
    _check_torchvision()  # before transformers imports it: a clear message instead of a failed model import
    from transformers import AutoModelForImageTextToText

    name_or_path = str(name_or_path)
    expanded = os.path.expanduser(name_or_path)
    if _looks_like_local_path(name_or_path) and not os.path.exists(expanded):
        raise FileNotFoundError(
            f"Model path {name_or_path!r} does not exist. Pass an existing directory written by "
            "`save_pretrained` (e.g. by pepo.models.tiny.save_tiny) or a hub id such as "
            "'Qwen/Qwen2.5-VL-3B-Instruct'."
        )
    if os.path.exists(expanded):
        if not os.path.isdir(expanded):
            raise OSError(f"Model path {name_or_path!r} is a file; expected a checkpoint directory.")
        name_or_path = expanded

    dtype: Any = torch_dtype
    if isinstance(dtype, str) and dtype != "auto":
        resolved = getattr(torch, dtype, None)
        if not isinstance(resolved, torch.dtype):
            raise ValueError(f"Unknown torch_dtype {torch_dtype!r}; use 'auto', 'float32', 'bfloat16', ...")
        dtype = resolved

    model_kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": trust_remote_code}
    if attn_implementation is not None:
        model_kwargs["attn_implementation"] = attn_implementation
    try:
        model = AutoModelForImageTextToText.from_pretrained(name_or_path, **model_kwargs)
    except Exception as exc:  # transformers raises OSError/ValueError/KeyError depending on the failure
        raise OSError(
            f"Could not load a vision-language model from {name_or_path!r} with AutoModelForImageTextToText: "
            f"{type(exc).__name__}: {exc}. Check that the path/hub id is right, that it contains config.json "
            "and weights of an image-text-to-text model, and (for hub ids) that you are online or the "
            "model is in the local HF cache."
        ) from exc
    try:
        processor = load_processor(name_or_path, trust_remote_code=trust_remote_code)
        tokenizer = getattr(processor, "tokenizer", None)
        if padding_side is not None and tokenizer is not None:
            tokenizer.padding_side = padding_side
            tokenizer.truncation_side = padding_side
    except Exception as exc:
        raise OSError(
            f"Loaded the model from {name_or_path!r} but not its processor: {type(exc).__name__}: {exc}. "
            "The directory needs the tokenizer files and processor_config.json (or preprocessor_config.json) "
            "written by `processor.save_pretrained`."
        ) from exc
    return model, processor


def _config_of(model_or_config):
    return getattr(model_or_config, "config", model_or_config)


def image_token_id(model_or_config, processor, image_token: str | None = None) -> int:
    """The id of the image placeholder token that the processor expands and the model replaces by vision
    features.

    Order tried: the explicit ``image_token`` override; the config's ``image_token_id`` then
    ``image_token_index`` (top-level, then the text sub-config); the processor's ``image_token`` /
    ``image_token_id``; the tokenizer's ``image_token`` / ``image_token_id``. A candidate counts only if it
    is an added (placeholder) token of the tokenizer that encodes to exactly one id. If the config names a
    token and the processor/tokenizer name others but never the config's, that is an error (the model would
    never see the processor's placeholders). The config's token is accepted when *any* processor or
    tokenizer attribute names it: Gemma 3's processor calls its text placeholder ``<start_of_image>``
    ``image_token`` while the model replaces ``<image_soft_token>`` (``tokenizer.image_token``).

    Raises:
        ValueError: nothing valid found (the message lists what was tried), or config/processor disagree.
    """
    tokenizer = getattr(processor, "tokenizer", processor)
    added = {int(i): t for t, i in tokenizer.get_added_vocab().items()}
    tried: list[str] = []

    def _valid_id(tid) -> int | None:
        if isinstance(tid, bool) or not isinstance(tid, int) or tid not in added:
            return None
        return tid if tokenizer.encode(added[tid], add_special_tokens=False) == [tid] else None

    def _id_of_token(tok) -> int | None:
        if not isinstance(tok, str):
            return None
        tid = tokenizer.convert_tokens_to_ids(tok)
        return _valid_id(tid) if isinstance(tid, int) and added.get(tid) == tok else None

    if image_token is not None:
        tid = _id_of_token(image_token)
        if tid is None:
            raise ValueError(
                f"image_token={image_token!r} is not a single added token of the tokenizer "
                f"({type(tokenizer).__name__}); pass the placeholder string the processor inserts per image."
            )
        return tid

    config = _config_of(model_or_config)
    config_id: int | None = None
    configs = [("config", config)]
    get_text = getattr(config, "get_text_config", None)
    if callable(get_text):
        text_config = get_text()
        if text_config is not config:
            configs.append(("config.text_config", text_config))
    for label, cfg in configs:
        for attr in ("image_token_id", "image_token_index"):
            tried.append(f"{label}.{attr}")
            config_id = _valid_id(getattr(cfg, attr, None))
            if config_id is not None:
                break
        if config_id is not None:
            break

    # Every processor-side candidate, in order of preference. A processor may name a *text* placeholder that
    # it expands into a run of the model's image token plus markers: Gemma3Processor's `image_token` is
    # <start_of_image> (expanded to <start_of_image> + <image_soft_token> * n + <end_of_image>) while the
    # model replaces <image_soft_token>, which its tokenizer names as `image_token`. So the config only
    # disagrees with the processor if *no* candidate names the config's token.
    candidates: list[tuple[str, int]] = []
    owners = [("processor", processor)] + ([("tokenizer", tokenizer)] if tokenizer is not processor else [])
    for owner_label, owner in owners:
        for attr, fn in (("image_token", _id_of_token), ("image_token_id", _valid_id)):
            tried.append(f"{owner_label}.{attr}")
            tid = fn(getattr(owner, attr, None))
            if tid is not None:
                candidates.append((f"{owner_label}.{attr}", tid))
    processor_id = candidates[0][1] if candidates else None

    if config_id is not None and candidates and all(tid != config_id for _, tid in candidates):
        processor_label = candidates[0][0]
        raise ValueError(
            f"image token mismatch: the model config says id {config_id} ({added[config_id]!r}) but "
            f"{processor_label} gives id {processor_id} ({added[processor_id]!r}). Set `image_token` in the "
            "config (or pass image_token=...) to the placeholder the processor actually inserts."
        )
    found = config_id if config_id is not None else processor_id
    if found is not None:
        return found
    raise ValueError(
        "processor/tokenizer has no image token: tried "
        + ", ".join(tried)
        + f" against the added tokens of {type(tokenizer).__name__} ({len(tokenizer)} tokens). Set "
        "`image_token` in the config (or pass image_token='<placeholder>') to the single token the "
        "processor inserts for each image."
    )
