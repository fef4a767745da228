"""The video-processor config file (``video_preprocessor_config.json``) of an image-only processor's folder.

pepo's image-only processors (built where torchvision is missing, see
:func:`pepo.models.loading.without_video_processor`) have no video sub-processor, so ``save_pretrained``
writes none. But in transformers 5.x the stock ``AutoProcessor`` of a family whose processor declares a
video sub-processor (Qwen2-VL, Qwen2.5-VL, InternVL, SmolVLM, LLaVA-OneVision) loads one whenever
torchvision is installed, and stops with "Can't load video processor" when the folder has no config for
it; vLLM loads processors the same way. This module writes that file, with the family's video-processor
class and the settings that class would save for frames processed like the folder's images (size,
resampling, rescaling and normalisation copied from the image processor).

Idefics3 and Gemma 3 processors declare no video sub-processor: nothing is written for them.

The file name and ``video_processor_type`` key are transformers' own (``VIDEO_PROCESSOR_NAME``), the ones
a hub checkpoint of these families carries next to its ``preprocessor_config.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

__all__ = ["VIDEO_PROCESSOR_FILE", "VIDEO_PROCESSORS", "video_processor_config", "write_video_processor_config"]

#: transformers' ``VIDEO_PROCESSOR_NAME``.
VIDEO_PROCESSOR_FILE = "video_preprocessor_config.json"


def _common(image) -> dict[str, Any]:
    """Settings every transformers ``BaseVideoProcessor`` saves, copied from the image processor."""
    return {
        "do_convert_rgb": True,
        "do_resize": True,
        "resample": int(getattr(image, "resample", 3)),
        "do_rescale": True,
        "rescale_factor": float(image.rescale_factor),
        "do_normalize": True,
        "image_mean": [float(x) for x in image.image_mean],
        "image_std": [float(x) for x in image.image_std],
        # transformers' own default for these classes ("False for BC"): the caller passes sampled frames
        "do_sample_frames": False,
    }


def _qwen(image) -> dict[str, Any]:
    return {
        "size": {"shortest_edge": image.size["shortest_edge"], "longest_edge": image.size["longest_edge"]},
        "patch_size": image.patch_size,
        "temporal_patch_size": image.temporal_patch_size,
        "merge_size": image.merge_size,
    }


def _height_width(image) -> dict[str, Any]:
    return {"size": {"height": image.size["height"], "width": image.size["width"]}}


def _internvl(image) -> dict[str, Any]:
    # InternVLVideoProcessor's own default: sample frames from the middle of each segment
    return {**_height_width(image), "initial_shift": True}


def _smolvlm(image) -> dict[str, Any]:
    return {
        "size": {"longest_edge": image.size["longest_edge"]},
        "max_image_size": {"longest_edge": image.max_image_size["longest_edge"]},
        "do_pad": True,
    }


#: stock processor class name -> (its video-processor class name, family-specific settings from the image
#: processor). The video classes are transformers 5.x's ``VIDEO_PROCESSOR_MAPPING_NAMES`` entries.
VIDEO_PROCESSORS: dict[str, tuple[str, Callable[[Any], dict[str, Any]]]] = {
    "Qwen2VLProcessor": ("Qwen2VLVideoProcessor", _qwen),
    "Qwen2_5_VLProcessor": ("Qwen2VLVideoProcessor", _qwen),
    "InternVLProcessor": ("InternVLVideoProcessor", _internvl),
    "SmolVLMProcessor": ("SmolVLMVideoProcessor", _smolvlm),
    "LlavaOnevisionProcessor": ("LlavaOnevisionVideoProcessor", _height_width),
}


def video_processor_config(processor) -> dict[str, Any] | None:
    """The ``video_preprocessor_config.json`` content for ``processor``, or None: its family has no video
    processor (Idefics3, Gemma 3, ...), or it has no ``image_processor`` to copy the settings from."""
    name = type(processor).__name__  # pepo's image-only classes keep the stock name
    entry = VIDEO_PROCESSORS.get(name)
    image = getattr(processor, "image_processor", None)
    if entry is None or image is None:
        return None
    video_cls, specific = entry
    return {"video_processor_type": video_cls, "processor_class": name, **_common(image), **specific(image)}


def write_video_processor_config(processor, path) -> Path | None:
    """Write ``path/video_preprocessor_config.json`` for an image-only ``processor`` of a family that has a
    video processor. Returns the file written, or None: no video processor in the family, the processor has a
    real video sub-processor (it saved its own config), or the file exists already (kept as it is)."""
    path = Path(path)
    target = path / VIDEO_PROCESSOR_FILE
    real_video = getattr(processor, "video_processor", None)
    if target.exists() or (real_video is not None and hasattr(real_video, "to_dict")):
        return None
    config = video_processor_config(processor)
    if config is None:
        return None
    target.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return target
