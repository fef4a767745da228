"""Image corruption shared by the perception-aware methods (PAPO, VPPO) and ``pepo analyze tokens``.

Two places to corrupt an image, as the two public codes do:

* ``stage="image"`` (PAPO): on the raw PIL image, before the processor resizes it. Blocks are
  ``block_size`` x ``block_size`` pixels of the *original* image; the processor then runs on the
  corrupted image (:func:`block_mask_image`).
* ``stage="pixels"`` (VPPO): on the processor's output, after resizing. Blocks are
  ``block_size`` x ``block_size`` pixels of the *resized* image, written in the processor's
  normalised space (:func:`block_mask_pixel_values`). Each family lays ``pixel_values`` out
  differently: Qwen2-VL / Qwen2.5-VL flatten every image into (patches, C * T * P * P) rows in
  merge-window order (described by ``image_grid_thw``); the others keep (..., C, H, W) images or
  tiles. Both are handled; all-zero images (Idefics3 / SmolVLM batch padding) are left alone.

Every mask is drawn from a ``torch.Generator`` seeded per row, never from the global RNG, so turning
masking on does not change sampling or dropout elsewhere, and a seed reproduces a mask exactly.

:func:`blank_image` (the mean-colour image of the same size used for the hidden-state shift of
``pepo analyze tokens``) lives here too: it is the ``probability=1, fill="mean"`` limit of
:func:`block_mask_image`.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image, ImageStat

__all__ = [
    "FILLS", "STAGES", "blank_image", "block_grid", "block_mask_image", "block_mask_pixel_values",
    "fill_colour", "normalised_fill",
]

STAGES = ("image", "pixels")
FILLS = ("black", "mean")


def fill_colour(image: Image.Image, fill: str) -> tuple[int, int, int]:
    """RGB colour (0-255) that masked blocks of ``image`` get: black, or the image's mean colour."""
    if fill == "black":
        return (0, 0, 0)
    if fill == "mean":
        return tuple(int(round(c)) for c in ImageStat.Stat(image.convert("RGB")).mean)  # type: ignore[return-value]
    raise ValueError(f"fill must be one of {FILLS}, got {fill!r}")


def blank_image(image: Image.Image) -> Image.Image:
    """An image of the same size and mode filled with ``image``'s mean colour (no visual content)."""
    rgb = image.convert("RGB")
    return Image.new("RGB", rgb.size, fill_colour(rgb, "mean"))


def block_grid(height: int, width: int, block_size: int, probability: float,
               generator: torch.Generator) -> torch.Tensor:
    """(height, width) bool pixel mask: the image is tiled into ``block_size`` blocks from the top-left
    corner (edge blocks may be partial) and each block is masked independently with ``probability``.

    One ``torch.rand`` of ceil(height / block_size) x ceil(width / block_size) values is drawn from
    ``generator`` (row-major over blocks).
    """
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"probability must be in [0, 1], got {probability}")
    rows, cols = math.ceil(height / block_size), math.ceil(width / block_size)
    blocks = torch.rand(rows, cols, generator=generator) < probability
    full = blocks.repeat_interleave(block_size, 0).repeat_interleave(block_size, 1)
    return full[:height, :width]


def block_mask_image(image: Image.Image, block_size: int, probability: float, generator: torch.Generator,
                     fill: str = "black") -> Image.Image:
    """PAPO-style corruption of a raw image: ``block_size``-pixel blocks set to ``fill`` with ``probability``.

    Returns an RGB image of the same size; the input is not modified.
    """
    rgb = image.convert("RGB")
    width, height = rgb.size
    mask = block_grid(height, width, block_size, probability, generator).numpy()
    pixels = np.array(rgb)
    pixels[mask] = fill_colour(rgb, fill)
    return Image.fromarray(pixels, "RGB")


def normalised_fill(image_processor: Any, fill: str, image: torch.Tensor | None = None) -> torch.Tensor:
    """(C,) value of a masked pixel in the processor's normalised space.

    ``black``: the normalisation of RGB 0, i.e. ``-mean / std`` when the processor normalises (0 when
    it does not). ``mean``: the per-channel mean of ``image`` ((C, H, W), already normalised).
    """
    if fill == "mean":
        if image is None:
            raise ValueError("fill='mean' needs the image")
        return image.float().mean(dim=(-1, -2))
    if fill != "black":
        raise ValueError(f"fill must be one of {FILLS}, got {fill!r}")
    if not getattr(image_processor, "do_normalize", True):
        return torch.zeros(3)
    mean = torch.as_tensor(image_processor.image_mean, dtype=torch.float32)
    std = torch.as_tensor(image_processor.image_std, dtype=torch.float32)
    return -mean / std


def _mask_chw(image: torch.Tensor, block_size: int, probability: float, generator: torch.Generator,
              image_processor: Any, fill: str) -> torch.Tensor:
    """Mask one (..., C, H, W) image; every leading index (frame) gets the same spatial mask."""
    height, width = image.shape[-2:]
    mask = block_grid(height, width, block_size, probability, generator).to(image.device)
    value = normalised_fill(image_processor, fill, image).to(image.device, image.dtype)
    value = value.view(*([1] * (image.dim() - 3)), -1, 1, 1) if value.dim() == 1 else value[..., None, None]
    return torch.where(mask, value, image)


def _qwen_unpatchify(rows: torch.Tensor, grid: Sequence[int], patch: int, merge: int, temporal: int,
                     channels: int) -> torch.Tensor:
    """(t*h*w, C*T*P*P) patch rows of one image -> (t*T, C, h*P, w*P) pixels (the processor's inverse)."""
    t, h, w = (int(x) for x in grid)
    x = rows.reshape(t, h // merge, w // merge, merge, merge, channels, temporal, patch, patch)
    # (t, hb, wb, hm, wm, C, T, ph, pw) -> (t, T, C, hb, hm, ph, wb, wm, pw)
    x = x.permute(0, 6, 5, 1, 3, 7, 2, 4, 8)
    return x.reshape(t * temporal, channels, h * patch, w * patch)


def _qwen_patchify(pixels: torch.Tensor, grid: Sequence[int], patch: int, merge: int, temporal: int) -> torch.Tensor:
    """Inverse of :func:`_qwen_unpatchify`."""
    t, h, w = (int(x) for x in grid)
    channels = pixels.shape[1]
    x = pixels.reshape(t, temporal, channels, h // merge, merge, patch, w // merge, merge, patch)
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)  # -> (t, hb, wb, hm, wm, C, T, ph, pw)
    return x.reshape(t * h * w, channels * temporal * patch * patch)


def block_mask_pixel_values(
    pixel_values: torch.Tensor | list[torch.Tensor],
    generators: Sequence[torch.Generator],
    image_processor: Any,
    block_size: int,
    probability: float,
    fill: str = "black",
    image_grid_thw: torch.Tensor | list[torch.Tensor] | None = None,
) -> torch.Tensor | list[torch.Tensor]:
    """VPPO-style corruption of processed images, one generator per row of the batch.

    Args:
        pixel_values: either one tensor per row (TRL's ``split_pixel_values_by_grid`` layout: Qwen
            patch rows, tiles, or images of that row) or, when the processor already pads one entry
            per row (Idefics3 / SmolVLM: (B, N, C, H, W)), a tensor whose first dimension is the row.
        generators: one ``torch.Generator`` per row; each image of a row draws its mask in turn.
        image_processor: the processor's image processor (normalisation constants; Qwen's
            ``patch_size``, ``merge_size``, ``temporal_patch_size``).
        image_grid_thw: per row, the (n_images, 3) grids of Qwen-style flattened patches (None otherwise).

    Returns:
        The same layout with the masked blocks replaced; the input is not modified.
    """
    per_row = pixel_values if isinstance(pixel_values, list) else list(pixel_values)
    if len(per_row) != len(generators):
        raise ValueError(f"{len(per_row)} rows of pixel_values but {len(generators)} generators")
    out = []
    for r, (rows, gen) in enumerate(zip(per_row, generators)):
        if image_grid_thw is not None:
            grids = image_grid_thw[r]
            patch = int(image_processor.patch_size)
            merge = int(getattr(image_processor, "merge_size", 1))
            temporal = int(getattr(image_processor, "temporal_patch_size", 1))
            channels = rows.shape[1] // (temporal * patch * patch)
            pieces, start = [], 0
            for grid in grids.tolist():
                n = grid[0] * grid[1] * grid[2]
                image = _qwen_unpatchify(rows[start : start + n], grid, patch, merge, temporal, channels)
                image = _mask_chw(image, block_size, probability, gen, image_processor, fill)
                pieces.append(_qwen_patchify(image, grid, patch, merge, temporal))
                start += n
            if start != rows.shape[0]:
                raise ValueError(f"row {r}: image_grid_thw covers {start} patches, pixel_values has {rows.shape[0]}")
            out.append(torch.cat(pieces) if pieces else rows.clone())
            continue
        if rows.dim() < 3:
            raise ValueError(f"row {r}: pixel_values of shape {tuple(rows.shape)} is neither (..., C, H, W) nor "
                             "Qwen-style patches with image_grid_thw")
        images = rows.reshape(-1, *rows.shape[-3:]).clone()
        for i in range(images.shape[0]):
            if not images[i].any():  # batch padding (Idefics3 / SmolVLM): the model skips all-zero images
                continue
            images[i] = _mask_chw(images[i], block_size, probability, gen, image_processor, fill)
        out.append(images.reshape(rows.shape))
    return out if isinstance(pixel_values, list) else torch.stack(out)
