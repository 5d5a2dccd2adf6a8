"""Image sources by name: unbounded, seeded streams of uint8 images.

A source is a plain function registered in `SOURCES`:

    fn(seed, indices, size, channels, device, **params) -> uint8 (N, channels, size, size)

Image i is a pure function of (seed, i) and the parameters: byte-identical on CPU whatever
batch renders it (see rng.py), the same distribution on CUDA. `render` and `stream` are the
entry points; they check arguments and bound memory by rendering in chunks.
"""

import inspect
import operator
from typing import Callable, Iterator

import torch
from torch import Tensor

from ..errors import UserError
from ..registry import Registry

SOURCES: Registry[Callable[..., Tensor]] = Registry("source")

# Render at most this many pixels per source call (256 images at 32x32): bounds the
# temporaries (several floats per pixel and per shape row) to tens of MB, which keeps them
# in cache and out of page faults; 4x larger chunks measured ~25% slower on CPU.
_PIXELS_PER_CHUNK = 1 << 18

_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, what PIL and torchvision use for "L"


def to_uint8(images: Tensor) -> Tensor:
    """Float images in [0, 1] (values outside are clipped) -> uint8, same shape."""
    return (images.clamp(0.0, 1.0) * 255.0).round_().to(torch.uint8)


def luminance(rgb: Tensor) -> Tensor:
    """(N, 3, H, W) float -> (N, 1, H, W) float luminance."""
    red, green, blue = rgb.unbind(1)
    # Elementwise sums, not a matmul: the result must not depend on the batch's size.
    return (_LUMA[0] * red + _LUMA[1] * green + _LUMA[2] * blue).unsqueeze(1)


def with_channels(rgb: Tensor, channels: int) -> Tensor:
    """(N, 3, H, W) float -> (N, channels, H, W) float, gray by luminance."""
    return rgb if channels == 3 else luminance(rgb)


def _check(name: str, seed: int, size: int, channels: int, params: dict) -> Callable[..., Tensor]:
    """The source function, or UserError on arguments it cannot render."""
    fn = SOURCES.get(name)
    try:
        operator.index(seed)
    except TypeError:
        raise UserError(f"seed must be an integer, got {seed!r}") from None
    if not isinstance(size, int) or size <= 0:
        raise UserError(f"image size must be a positive integer, got {size!r}")
    if channels not in (1, 3):
        raise UserError(f"channels must be 1 or 3, got {channels!r}")
    accepted = list(inspect.signature(fn).parameters)[5:]  # after (seed, indices, size, channels, device)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise UserError(
            f"source '{name}' has no parameter {', '.join(unknown)}; valid: {', '.join(accepted) or 'none'}"
        )
    return fn


def _device(device: "str | torch.device") -> torch.device:
    try:
        return torch.device(device)
    except RuntimeError as error:
        raise UserError(f"bad device {device!r}: {error}") from None


def render(
    name: str,
    seed: int,
    start: int,
    count: int,
    size: int,
    channels: int = 3,
    device: "str | torch.device" = "cpu",
    **params,
) -> Tensor:
    """uint8 (count, channels, size, size): images start..start+count-1 of the stream `seed`."""
    fn = _check(name, seed, size, channels, params)
    if not isinstance(count, int) or count < 0:
        raise UserError(f"image count must be a non-negative integer, got {count!r}")
    if not isinstance(start, int) or start < 0:
        raise UserError(f"start index must be a non-negative integer, got {start!r}")
    device = _device(device)
    out = torch.empty((count, channels, size, size), dtype=torch.uint8, device=device)
    chunk = max(1, _PIXELS_PER_CHUNK // (size * size))
    for first in range(0, count, chunk):
        last = min(first + chunk, count)
        indices = torch.arange(start + first, start + last, dtype=torch.int64, device=device)
        out[first:last] = fn(int(seed), indices, size, channels, device, **params)
    return out


def stream(
    name: str,
    seed: int,
    batch_size: int,
    size: int,
    channels: int = 3,
    device: "str | torch.device" = "cpu",
    **params,
) -> Iterator[Tensor]:
    """Endless uint8 (batch_size, channels, size, size) batches of consecutive images 0, 1, ..."""
    _check(name, seed, size, channels, params)  # now, not at the first next()
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise UserError(f"batch size must be a positive integer, got {batch_size!r}")

    def batches() -> Iterator[Tensor]:
        start = 0
        while True:
            yield render(name, seed, start, batch_size, size, channels, device, **params)
            start += batch_size

    return batches()


# Sources register themselves on import; imported last because they use the helpers above.
from . import leaves, noise, photos, shaders  # noqa: E402,F401
from .shaders import is_simple  # noqa: E402,F401
