"""Flip, padded crop, elastic warp and erasing with explicit per-image parameters (torchvision semantics)."""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ._per_sample import constant, pixel_centres, uniform


def flip_crop(x: Tensor, flip: Tensor, top: Tensor, left: Tensor, padding: int) -> Tensor:
    """RandomHorizontalFlip then RandomCrop(padding, fill 0) per image, as one gather.

    flip: (B,) bool; top, left: (B,) offsets in [0, 2 * padding] into the zero-padded image.
    """
    batch, channels, height, width = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))  # (B, C, H+2p, W+2p)
    rows = top[:, None] + torch.arange(height, device=x.device)  # (B, H)
    j = torch.arange(width, device=x.device)
    # Cropping a flipped image = reading the padded image right to left from the mirrored offset.
    cols = torch.where(flip[:, None], width - 1 + 2 * padding - left[:, None] - j, left[:, None] + j)  # (B, W)
    index = (rows[:, :, None] * (width + 2 * padding) + cols[:, None, :]).view(batch, 1, height * width)
    return padded.flatten(2).gather(2, index.expand(-1, channels, -1)).view_as(x)


@functools.lru_cache(maxsize=16)
def _gaussian_blur_matrix(size: int, sigma: float, device: torch.device) -> Tensor:
    """(size, size) M with `v @ M` = torchvision's gaussian_blur of v along one axis (reflect padding).

    Kernel as ElasticTransform builds it: int(8 * sigma + 1) taps made odd, torchvision's
    `_get_gaussian_kernel1d`. Reflecting repeatedly lets the kernel outgrow small images (torchvision
    raises there). As a matrix, blurring a whole batch of fields is two matmuls: far cheaper on CPU
    than a 41-tap convolution.
    """
    taps = int(8 * sigma + 1) | 1  # odd
    lim = (taps - 1) / (2.0 * math.sqrt(2.0))
    kernel = torch.softmax(-((torch.linspace(-lim, lim, taps) / sigma) ** 2), dim=0)  # (taps,)
    source = torch.arange(size)[:, None] + torch.arange(taps) - taps // 2  # (size, taps) input index per output
    if size > 1:
        period = 2 * (size - 1)
        source = source.remainder(period)
        source = torch.where(source >= size, period - source, source)
    else:
        source = torch.zeros_like(source)
    output = torch.arange(size)[:, None].expand_as(source)
    matrix = torch.zeros(size, size).index_put_((source, output), kernel.expand_as(source), accumulate=True)
    return matrix.to(device)


def elastic_displacement(noise: Tensor, alpha: float, sigma: float) -> Tensor:
    """ElasticTransform's displacement from uniform noise (B, 2, H, W) in [-1, 1]: (B, H, W, 2), normalised units."""
    height, width = noise.shape[-2:]
    if sigma > 0:
        blur_rows = _gaussian_blur_matrix(height, float(sigma), noise.device)
        blur_cols = _gaussian_blur_matrix(width, float(sigma), noise.device)
        noise = blur_rows.T @ noise @ blur_cols
    scale = constant((alpha / width, alpha / height), noise.device, noise.dtype)[None, :, None, None]
    return (noise * scale).permute(0, 2, 3, 1)


def elastic(x: Tensor, displacement: Tensor) -> Tensor:
    """torchvision's F.elastic (bilinear, fill 0) with one displacement field (B, H, W, 2) per image."""
    height, width = x.shape[-2:]
    dx, dy = displacement.unbind(dim=-1)  # (B, H, W) each, normalised units
    # Identity grid (torchvision's `_create_identity_grid`) plus displacement, built per axis: ops on
    # the interleaved (B, H, W, 2) layout are several times slower on CPU.
    grid_x = pixel_centres(width, x.device) * (2.0 / width) + dx
    grid_y = pixel_centres(height, x.device)[:, None] * (2.0 / height) + dy
    out = F.grid_sample(x, torch.stack((grid_x, grid_y), dim=-1), mode="bilinear", align_corners=False)
    # torchvision applies fill=0 by warping a ones-mask alongside and multiplying by it, which dims
    # pixels sampled across the border a second time; match it so the two agree there. The warped
    # mask is the product of the two 1-D in-bounds bilinear weights.
    coverage = _in_bounds_weight(grid_x, width) * _in_bounds_weight(grid_y, height)  # (B, H, W)
    return out * coverage[:, None]


def _in_bounds_weight(coordinate: Tensor, size: int) -> Tensor:
    """Bilinear weight that falls inside [0, size) for normalised coordinates (align_corners=False)."""
    position = ((coordinate + 1.0) * size - 1.0) * 0.5  # input pixel index
    return torch.minimum(position + 1.0, size - position).clamp_(0.0, 1.0)


def erase(x: Tensor, top: Tensor, left: Tensor, height: Tensor, width: Tensor) -> Tensor:
    """Zero a box per image (torchvision F.erase, value 0); all (B,) integer tensors, height 0 = no box."""
    rows = torch.arange(x.shape[-2], device=x.device)
    cols = torch.arange(x.shape[-1], device=x.device)
    in_rows = (rows >= top[:, None]) & (rows < (top + height)[:, None])  # (B, H)
    in_cols = (cols >= left[:, None]) & (cols < (left + width)[:, None])  # (B, W)
    return x.masked_fill(in_rows[:, None, :, None] & in_cols[:, None, None, :], 0.0)


def draw_erasing_boxes(
    batch: int, size: tuple[int, int], p: float, generator: torch.Generator, device: torch.device, attempts: int = 10
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """RandomErasing's box per image (scale 0.02-0.33, ratio 0.3-3.3): the first of 10 tries that fits, else none."""
    image_height, image_width = size
    u = uniform(generator, (5, batch, attempts), device)
    area = image_height * image_width * (0.02 + (0.33 - 0.02) * u[0])
    log_ratio = math.log(0.3) + (math.log(3.3) - math.log(0.3)) * u[1]
    height = torch.sqrt(area * torch.exp(log_ratio)).round().long()  # (B, attempts)
    width = torch.sqrt(area / torch.exp(log_ratio)).round().long()
    fits = (height < image_height) & (width < image_width)
    first = fits.long().argmax(dim=1, keepdim=True)  # argmax returns the first of equal maxima
    apply = fits.any(dim=1) & (u[2, :, 0] < p)
    height = torch.where(apply, height.gather(1, first).squeeze(1), 0)
    width = torch.where(apply, width.gather(1, first).squeeze(1), 0)
    top = (u[3, :, 0] * (image_height - height + 1)).long()
    left = (u[4, :, 0] * (image_width - width + 1)).long()
    return top, left, height, width
