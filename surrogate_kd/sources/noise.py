"""Gaussian noise images: every pixel and channel drawn from N(mean_c, std_c), clipped to [0, 1].

The paper's weakest source (its Table 1): no structure at all, only the target dataset's
per-channel statistics. The defaults are Fashion-MNIST's (mean 0.286, std 0.353).
"""

from typing import Sequence

import torch
from torch import Tensor

from ..errors import UserError
from ..registry import SOURCES
from .pixels import to_uint8
from .rng import Draws


def _per_channel(value: "float | Sequence[float]", channels: int, what: str) -> list[float]:
    """A scalar broadcast to every channel, or one value per channel."""
    values = [value] if isinstance(value, (int, float)) else list(value)
    if len(values) == 1:
        values = values * channels
    if len(values) != channels:
        raise UserError(f"noise {what} needs 1 or {channels} values, got {len(values)}")
    return [float(v) for v in values]


@SOURCES.register("noise")
def noise(
    seed: int,
    indices: Tensor,
    size: int,
    channels: int,
    device: torch.device,
    strategy: str,
    mean: "float | Sequence[float]" = 0.286,
    std: "float | Sequence[float]" = 0.353,
) -> Tensor:
    """uint8 (N, channels, size, size) of clipped per-channel Gaussian noise."""
    means = _per_channel(mean, channels, "mean")
    stds = _per_channel(std, channels, "std")
    if min(stds) < 0:
        raise UserError(f"noise std must be >= 0, got {stds}")
    # (1, C, 1, 1) each, filled on the device: torch.tensor(means) would copy from the host on every call.
    mean_t = torch.cat([torch.full((1, 1, 1, 1), value, device=device) for value in means], 1)
    std_t = torch.cat([torch.full((1, 1, 1, 1), value, device=device) for value in stds], 1)
    z = Draws(seed, indices).normal(channels, size, size)  # (N, C, H, W) float32
    return to_uint8(z * std_t + mean_t)
