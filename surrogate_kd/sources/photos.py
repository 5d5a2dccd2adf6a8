"""Out-of-domain real photos: random square crops of the photos bundled with scikit-image and
scikit-learn, resized to the requested size.

A small stand-in for the paper's real OOD sources (ImageNet-OOD, Food): a few megapixels of
natural images, so crops at random scales and positions still give many distinct views.
Each crop is resampled bilinearly from the mip level just above the target size (no
aliasing from large downscales), by gathering from one flat buffer that holds every level
of every photo, so a whole batch resamples at once.
"""

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

from ..errors import UserError
from ..registry import SOURCES
from .pixels import channels_first, to_uint8, with_channels
from .rng import Draws

# skimage.data names that ship with the wheel (others need a download, unavailable offline).
_SKIMAGE_PHOTOS = (
    "astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry",
    "retina", "camera", "coins", "moon", "grass", "gravel", "brick", "page",
)  # fmt: skip
_MIN_LEVEL_SIDE = 8  # stop the mip pyramid below this many pixels


@lru_cache(maxsize=1)
def load_photos() -> tuple[np.ndarray, ...]:
    """The bundled photos as uint8 (H, W, 3) arrays, gray ones replicated to RGB."""
    try:
        import skimage.data
        from sklearn.datasets import load_sample_images
    except ImportError:
        raise UserError(
            "the photos source needs scikit-image and scikit-learn: pip install scikit-image scikit-learn"
        ) from None
    photos = []
    for name in _SKIMAGE_PHOTOS:
        try:
            photos.append(getattr(skimage.data, name)())
        except Exception:  # missing from this scikit-image version, or needs a download
            continue
    photos.extend(load_sample_images().images)  # china.jpg, flower.jpg
    rgb = []
    for photo in photos:
        photo = np.asarray(photo)
        if photo.ndim == 2:
            photo = np.repeat(photo[:, :, None], 3, axis=2)
        rgb.append(np.ascontiguousarray(photo[:, :, :3], dtype=np.uint8))
    if not rgb:
        raise UserError("the photos source found no bundled photos in scikit-image or scikit-learn")
    return tuple(rgb)


@dataclass(frozen=True)
class _Atlas:
    """Every mip level of every photo, as rows of one pixel buffer."""

    pixels: Tensor  # (T, 3) uint8
    offset: Tensor  # (P, L) int64: first row of level l of photo p
    height: Tensor  # (P, L) int64
    width: Tensor  # (P, L) int64
    levels: Tensor  # (P,) int64: levels that photo p has (L is the maximum)


@lru_cache(maxsize=4)
def _atlas(device: torch.device) -> _Atlas:
    chunks, offsets, heights, widths = [], [], [], []  # the last three: one list per photo
    start = 0
    for photo in load_photos():
        pyramid = [torch.tensor(photo, dtype=torch.float32)]  # (H, W, 3); copies the read-only array
        while min(pyramid[-1].shape[:2]) // 2 >= _MIN_LEVEL_SIDE:
            h, w = pyramid[-1].shape[0] // 2, pyramid[-1].shape[1] // 2
            pyramid.append(pyramid[-1][: 2 * h, : 2 * w].reshape(h, 2, w, 2, 3).mean((1, 3)))  # 2x2 box filter
        areas = [level.shape[0] * level.shape[1] for level in pyramid]
        offsets.append([start + sum(areas[:k]) for k in range(len(pyramid))])
        heights.append([level.shape[0] for level in pyramid])
        widths.append([level.shape[1] for level in pyramid])
        chunks.extend(level.round().to(torch.uint8).reshape(-1, 3) for level in pyramid)
        start += sum(areas)
    levels = [len(row) for row in offsets]
    depth = max(levels)

    def padded(table: list[list[int]]) -> Tensor:  # repeat each photo's last level up to `depth`
        return torch.tensor([row + row[-1:] * (depth - len(row)) for row in table], device=device)

    return _Atlas(torch.cat(chunks).to(device), padded(offsets), padded(heights), padded(widths),
                  torch.tensor(levels, device=device))  # fmt: skip


def _bilinear_taps(coord: Tensor, limit: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Left/right integer taps and right weight for sample positions coord (n, S), clamped to [0, limit)."""
    coord = coord.clamp(min=0.0)
    left = torch.floor(coord)
    weight = coord - left
    left = left.to(torch.int64)
    return left.clamp(max=limit - 1), (left + 1).clamp(max=limit - 1), weight


@SOURCES.register("photos")
def photos(
    seed: int,
    indices: Tensor,
    size: int,
    channels: int,
    device: torch.device,
    strategy: str,
    min_scale: float = 0.1,
    max_scale: float = 1.0,
) -> Tensor:
    """uint8 (N, channels, size, size) crops; crop side = U(min_scale, max_scale) x shorter photo side.

    Gathers with fixed shapes and no host sync: the same ops for either strategy. The photo atlas
    is built once per process and device (a tensor from Python data on that first call only).
    """
    if not 0 < min_scale <= max_scale <= 1:
        raise UserError(f"photos needs 0 < min_scale <= max_scale <= 1, got {min_scale}, {max_scale}")
    atlas = _atlas(torch.device(device))
    photo_u, scale_u, x_u, y_u = Draws(seed, indices).uniform(4).unbind(1)  # (N,) each
    photo = (photo_u * atlas.levels.numel()).to(torch.int64).clamp_(max=atlas.levels.numel() - 1)
    full_h, full_w = atlas.height[photo, 0].float(), atlas.width[photo, 0].float()
    side = (min_scale + (max_scale - min_scale) * scale_u) * torch.minimum(full_h, full_w)  # level-0 pixels
    left, top = x_u * (full_w - side), y_u * (full_h - side)
    # Finest level at which the crop still spans >= size pixels: at most a 2x bilinear downscale.
    level = torch.floor(torch.log(side / size) / math.log(2.0)).clamp(min=0).to(torch.int64)
    level = torch.minimum(level, atlas.levels[photo] - 1)
    scale = torch.bitwise_left_shift(torch.ones_like(level), level).float().unsqueeze(1)  # 2^level, exact
    step = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) / size  # (S,) pixel centres
    # Level-l pixel k is centred on level-0 coordinate 2^l (k + 0.5).
    sample_x = (left.unsqueeze(1) + step * side.unsqueeze(1)) / scale - 0.5  # (N, S)
    sample_y = (top.unsqueeze(1) + step * side.unsqueeze(1)) / scale - 0.5
    height, width = atlas.height[photo, level].unsqueeze(1), atlas.width[photo, level].unsqueeze(1)
    x0, x1, wx = _bilinear_taps(sample_x, width)
    y0, y1, wy = _bilinear_taps(sample_y, height)
    base = atlas.offset[photo, level].view(-1, 1, 1)

    def tap(rows: Tensor, cols: Tensor) -> Tensor:  # (N, S) rows x (N, S) cols -> (N, S, S, 3) float
        flat = base + (rows * width).unsqueeze(2) + cols.unsqueeze(1)
        return atlas.pixels[flat].float()

    wx, wy = wx.view(-1, 1, size, 1), wy.view(-1, size, 1, 1)
    upper = tap(y0, x0) * (1 - wx) + tap(y0, x1) * wx
    lower = tap(y1, x0) * (1 - wx) + tap(y1, x1) * wx
    rgb = channels_first(upper * (1 - wy) + lower * wy) / 255.0  # (N, 3, S, S)
    return to_uint8(with_channels(rgb, channels))
