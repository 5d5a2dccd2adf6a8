"""Pixel conversions the sources share: float -> uint8, channel count, channel layout."""

import torch
from torch import Tensor

from ..augment import luminance


def to_uint8(images: Tensor) -> Tensor:
    """Float images in [0, 1] (values outside are clipped) -> uint8, same shape."""
    return (images.clamp(0.0, 1.0) * 255.0).round_().to(torch.uint8)


def with_channels(rgb: Tensor, channels: int) -> Tensor:
    """(N, 3, H, W) float -> (N, channels, H, W) float, gray by luminance."""
    return rgb if channels == 3 else luminance(rgb)


def channels_first(images: Tensor) -> Tensor:
    """(N, H, W, C) -> (N, C, H, W), a view: sources that gather whole pixels work channels-last."""
    return images.permute(0, 3, 1, 2)
