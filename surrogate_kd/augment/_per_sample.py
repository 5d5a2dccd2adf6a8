"""Per-sample randomness and selection shared by the augmentation kernels."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor


def uniform(generator: torch.Generator, shape: tuple[int, ...], device: torch.device) -> Tensor:
    """U[0, 1) drawn on the generator's device, then moved: a CPU generator gives the same draws on every device."""
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


def randint(generator: torch.Generator, high: int, shape: tuple[int, ...], device: torch.device) -> Tensor:
    """Integers in [0, high), drawn like `uniform`."""
    return torch.randint(high, shape, generator=generator, device=generator.device).to(device)


SORT_BY_GROUP_ON = {"cpu"}  # device types where apply_grouped sorts; the tests empty it to check the other path


def apply_grouped(x: Tensor, group: Tensor, fns: dict[int, Callable[..., Tensor]], *per_image: Tensor) -> Tensor:
    """x (B, C, H, W) with `fns[g](images, *per_image)` applied to the images whose group (B,) is g.

    Images in a group without a function are unchanged. On CPU the batch is sorted by group once
    and each function runs on its contiguous slice: its cost follows the number of images that
    chose it, for a fixed handful of calls per batch. On an accelerator each function runs on the
    whole batch and `torch.where` picks: no host sync, no data-dependent shapes (CUDA-graph
    friendly), and kernels that small are launch-bound anyway.
    """
    if x.device.type not in SORT_BY_GROUP_ON:
        for g, fn in fns.items():
            x = torch.where((group == g)[:, None, None, None], fn(x, *per_image), x)
        return x
    order = torch.argsort(group, stable=True)  # (B,) images grouped, each group contiguous
    sorted_x = x.index_select(0, order)
    sorted_params = [p.index_select(0, order) for p in per_image]
    ends = torch.bincount(group, minlength=max(fns) + 1).cumsum(0).tolist()
    for g, fn in fns.items():
        rows = slice(ends[g - 1] if g > 0 else 0, ends[g])
        if rows.stop > rows.start:
            sorted_x[rows] = fn(sorted_x[rows], *(p[rows] for p in sorted_params))
    return torch.empty_like(x).index_copy_(0, order, sorted_x)


def pixel_centres(n: int, device: torch.device) -> Tensor:
    """(n,) pixel-centre coordinates with the origin at the image centre (align_corners=False)."""
    return torch.linspace((1.0 - n) * 0.5, (n - 1.0) * 0.5, n, device=device)
