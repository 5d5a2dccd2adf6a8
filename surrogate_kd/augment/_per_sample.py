"""Per-sample randomness and selection shared by the augmentation kernels."""

from __future__ import annotations

import torch
from torch import Tensor


def uniform(generator: torch.Generator, shape: tuple[int, ...], device: torch.device) -> Tensor:
    """U[0, 1) drawn on the generator's device, then moved: a CPU generator gives the same draws on every device."""
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


def randint(generator: torch.Generator, high: int, shape: tuple[int, ...], device: torch.device) -> Tensor:
    """Integers in [0, high), drawn like `uniform`."""
    return torch.randint(high, shape, generator=generator, device=generator.device).to(device)


GATHER_CHOSEN_ON = {"cpu"}  # device types where on_chosen gathers; the tests empty it to check the other path


def on_chosen(x: Tensor, chosen: Tensor, fn, *per_image: Tensor) -> Tensor:
    """x with `fn(images, *per_image)` applied to the images where chosen (B,) is true.

    On CPU the chosen images are gathered and written back in place (x must be the caller's own
    tensor), so an op costs in proportion to how many images chose it. On an accelerator `fn` runs
    on the whole batch and `torch.where` picks: no host sync and no data-dependent shapes
    (CUDA-graph friendly), and small kernels there are launch-bound anyway.
    """
    if x.device.type not in GATHER_CHOSEN_ON:
        return torch.where(chosen[:, None, None, None], fn(x, *per_image), x)
    index = chosen.nonzero().squeeze(1)
    if index.numel() > 0:
        x.index_copy_(0, index, fn(x.index_select(0, index), *(p.index_select(0, index) for p in per_image)))
    return x


def pixel_centres(n: int, device: torch.device) -> Tensor:
    """(n,) pixel-centre coordinates with the origin at the image centre (align_corners=False)."""
    return torch.linspace((1.0 - n) * 0.5, (n - 1.0) * 0.5, n, device=device)
