"""Image sources by name: unbounded, seeded streams of uint8 images.

A source is a plain function registered in `SOURCES` beside its definition (one module each):

    fn(seed, indices, size, channels, device, strategy, **params) -> uint8 (N, channels, size, size)

Image i is a pure function of (seed, i) and the parameters: byte-identical on CPU whatever
batch renders it (see rng.py), the same distribution on CUDA. `render` is the entry point; it
checks arguments (parameter names and values against the source's signature) and bounds
memory by rendering in chunks. `strategy` (strategy.py) says how a source spends its work:
'gather' on CPU, 'where' (the same ops at any batch size, no host sync) on accelerators; both
give the same bytes on CPU.
"""

import inspect
import operator
import types
import typing
from collections.abc import Sequence
from typing import Any, Callable

import torch
from torch import Tensor

from ..augment import luminance
from ..errors import UserError
from ..registry import SOURCES
from . import leaves, noise, photos, shaders  # noqa: F401  each registers its source in SOURCES
from .shaders import is_simple
from ..runtime import STRATEGIES, resolve_strategy

__all__ = ["SOURCES", "STRATEGIES", "is_simple", "luminance", "render", "render_at"]

# Render at most this many pixels per source call. 'gather' (CPU): 256 images at 32x32, which
# bounds the temporaries (several floats per pixel and per shape row) to tens of MB, in cache and
# out of page faults; 4x larger chunks measured ~25% slower on CPU. 'where': 4,096 images at 32x32
# (83 at 224x224), so a batch of up to 4,096 images at 32x32 is one call, one fixed set of ops;
# its temporaries are a few GB (the shader attempts and leaf rounds multiply the pixels).
_PIXELS_PER_CHUNK = {"gather": 1 << 18, "where": 1 << 22}

_FIXED_ARGUMENTS = 6  # (seed, indices, size, channels, device, strategy); the source's parameters follow


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
    accepted = list(inspect.signature(fn).parameters)[_FIXED_ARGUMENTS:]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise UserError(
            f"source '{name}' has no parameter {', '.join(unknown)}; valid: {', '.join(accepted) or 'none'}"
        )
    hints = typing.get_type_hints(fn)
    for key, value in params.items():
        if key in hints and not _conforms(value, hints[key]):
            raise UserError(f"source '{name}' parameter {key} must be {_describe(hints[key])}, got {value!r}")
    return fn


def _conforms(value: Any, hint: Any) -> bool:
    """Whether `value` fits a parameter annotation built from int, float, bool, unions and sequences.

    bool is refused where a number is declared (Python counts it as one); an int is a float.
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, arg) for arg in args)
    if origin in (tuple, list, Sequence):
        return isinstance(value, (tuple, list)) and all(_conforms(item, args[0]) for item in value)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return True  # an annotation this check does not know: the source checks the value itself


def _describe(hint: Any) -> str:
    """Words for an annotation, as in "must be a number or a list of numbers"."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in args)
    if origin in (tuple, list, Sequence):
        return "a list of " + {int: "integers", float: "numbers", bool: "booleans"}.get(args[0], "values")
    return {bool: "true or false", int: "an integer", float: "a number"}.get(hint, str(hint))


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
    strategy: "str | None" = None,
    **params,
) -> Tensor:
    """uint8 (count, channels, size, size): images start..start+count-1 of the stream `seed`.

    strategy: 'gather' or 'where' (strategy.py); None picks 'gather' on CPU, 'where' elsewhere.
    """
    fn = _check(name, seed, size, channels, params)
    if not isinstance(count, int) or count < 0:
        raise UserError(f"image count must be a non-negative integer, got {count!r}")
    if not isinstance(start, int) or start < 0:
        raise UserError(f"start index must be a non-negative integer, got {start!r}")
    device = _device(device)
    indices = torch.arange(start, start + count, dtype=torch.int64, device=device)
    return _render(fn, seed, indices, size, channels, device, strategy, params)


def render_at(
    name: str,
    seed: int,
    indices: Tensor,
    size: int,
    channels: int = 3,
    device: "str | torch.device" = "cpu",
    strategy: "str | None" = None,
    **params,
) -> Tensor:
    """uint8 (len(indices), channels, size, size): images `indices` (any order, repeats allowed) of
    the stream `seed`, the same bytes as `render` gives them on CPU: a selection is rendered in one
    pass, not range by range."""
    fn = _check(name, seed, size, channels, params)
    indices = torch.as_tensor(indices, dtype=torch.int64).cpu()
    if indices.ndim != 1 or (len(indices) and int(indices.min()) < 0):
        raise UserError("image indices must be a 1-D tensor of non-negative integers")
    device = _device(device)
    return _render(fn, seed, indices.to(device), size, channels, device, strategy, params)


def _render(fn, seed: int, indices: Tensor, size: int, channels: int, device: torch.device, strategy, params):
    """The source's images for `indices` (on `device`), rendered in chunks that bound memory."""
    strategy = resolve_strategy(strategy, device, "source strategy")
    out = torch.empty((len(indices), channels, size, size), dtype=torch.uint8, device=device)
    chunk = max(1, _PIXELS_PER_CHUNK[strategy] // (size * size))
    for first in range(0, len(indices), chunk):
        last = min(first + chunk, len(indices))
        out[first:last] = fn(int(seed), indices[first:last], size, channels, device, strategy, **params)
    return out
