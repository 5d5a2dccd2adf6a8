"""Helpers on batches shared by the augmentation kernels and the sources.

Per-image draws from a generator, the two strategies for applying to each image the op it chose
(`apply_grouped`, also the sources' per-image programs), constants cached per device, luminance,
pixel centres.
"""

from __future__ import annotations

import functools
from typing import Callable, Mapping

import torch
from torch import Tensor

from ..runtime import default_strategy


@functools.lru_cache(maxsize=256)
def constant(values: tuple, device: torch.device, dtype: torch.dtype = torch.float32) -> Tensor:
    """A tensor of Python numbers, built once per (values, device, dtype) and shared: never modify it in place.

    `torch.tensor(...)` on every call is a host->device copy per call on a GPU, and a CUDA graph
    cannot capture it; built on the first call (the warm-up before a capture), it is a plain input.
    """
    return torch.tensor(values, dtype=dtype, device=device)


def uniform(generator: torch.Generator, shape: tuple[int, ...], device: torch.device) -> Tensor:
    """U[0, 1) drawn on the generator's device, then moved: a CPU generator gives the same draws on every device."""
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


def randint(generator: torch.Generator, high: int, shape: tuple[int, ...], device: torch.device) -> Tensor:
    """Integers in [0, high), drawn like `uniform`."""
    return torch.randint(high, shape, generator=generator, device=generator.device).to(device)


Fn = Callable[..., Tensor | tuple[Tensor, ...]]


def apply_grouped(
    group: Tensor, fns: Mapping[int, Fn], *inputs: Tensor, outputs: int = 1, sort: bool | None = None
) -> Tensor | tuple[Tensor, ...]:
    """Row b of the result is `fns[group[b]]` applied to row b of the inputs, for every b: one call per function.

    group: (B,) int64; inputs: (B, ...) each. Each function takes all the inputs and returns new
    values for the first `outputs` of them (a tensor, or a tuple when `outputs` > 1), shaped and
    typed like them; rows whose group has no function keep those inputs unchanged.

    Sorting (`sort=True`, the 'gather' strategy; by default on CPU): the batch is sorted by group
    once and each function runs on its contiguous slice, so its cost follows the number of rows
    that chose it, for a fixed handful of calls and one host sync per batch. Otherwise ('where')
    each function runs on the whole batch and `torch.where` picks: no host sync, no data-dependent
    shapes (CUDA-graph friendly), and kernels that small are launch-bound anyway. The functions
    must treat rows independently.
    """
    if sort is None:
        sort = default_strategy(group.device) == "gather"
    if not sort:
        results = list(inputs[:outputs])
        for g, fn in fns.items():
            chosen = group == g  # (B,)
            for j, new in enumerate(_as_tuple(fn(*inputs))):
                results[j] = torch.where(chosen.view(-1, *[1] * (new.dim() - 1)), new, results[j])
        return results[0] if outputs == 1 else tuple(results)
    order = torch.argsort(group, stable=True)  # (B,) rows grouped, each group contiguous, in batch order
    sorted_inputs = [t.index_select(0, order) for t in inputs]  # copies: the first `outputs` take the results
    ends = torch.bincount(group, minlength=max(fns) + 1).cumsum(0).tolist()
    for g, fn in fns.items():
        rows = slice(ends[g - 1] if g > 0 else 0, ends[g])
        if rows.stop > rows.start:
            new = _as_tuple(fn(*(t[rows] for t in sorted_inputs)))
            if outputs > 1:  # a result may view an input that an earlier result overwrites: copy those first
                written = {t.untyped_storage().data_ptr() for t in sorted_inputs[:outputs]}
                new = [v.clone() if v.untyped_storage().data_ptr() in written else v for v in new]
            for result, value in zip(sorted_inputs, new):
                result[rows] = value
    results = tuple(torch.empty_like(t).index_copy_(0, order, t) for t in sorted_inputs[:outputs])
    return results[0] if outputs == 1 else results


def _as_tuple(values: Tensor | tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    return (values,) if isinstance(values, Tensor) else values


def luminance(rgb: Tensor) -> Tensor:
    """(N, 3, H, W) float -> (N, 1, H, W) float luma, ITU-R BT.601 weights (PIL's "L" conversion).

    Elementwise sums, not a matmul or a reduction: the result must not depend on the batch's size
    (sources rely on it: an image is the same bytes whatever batch renders it).
    """
    red, green, blue = rgb.unbind(1)
    return (0.299 * red + 0.587 * green + 0.114 * blue).unsqueeze(1)


def pixel_centres(n: int, device: torch.device) -> Tensor:
    """(n,) pixel-centre coordinates with the origin at the image centre (align_corners=False)."""
    return torch.linspace((1.0 - n) * 0.5, (n - 1.0) * 0.5, n, device=device)
