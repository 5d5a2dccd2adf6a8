"""Counter-based randomness: draw k of image i is a hash of (seed, i, k).

A `torch.Generator` would make image i depend on how many images were drawn before it
in the same batch. Hashing instead makes every image a pure function of (seed, index):
the same bits whatever batch renders it, on any device, since int64 wrap-around
multiplication and shifts are exact everywhere. The mixer is splitmix64's finaliser
(Steele et al. 2014), applied to a Weyl sequence of counters.
"""

import math

import torch
from torch import Tensor

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15  # 2^64 / golden ratio: the splitmix64 counter increment
_FLOAT24 = 1.0 / (1 << 24)  # 24 random bits fill a float32 mantissa exactly


def _int64(value: int) -> int:
    """The signed int64 with the same low 64 bits as `value` (torch has no uint64 math)."""
    value &= _MASK64
    return value - (1 << 64) if value >= 1 << 63 else value


_GAMMA = _int64(_GOLDEN)
_MUL1 = _int64(0xBF58476D1CE4E5B9)
_MUL2 = _int64(0x94D049BB133111EB)


def _shift_right(x: Tensor, bits: int) -> Tensor:
    """Logical right shift of int64 (torch's `>>` is arithmetic: it copies the sign bit)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def mix64(x: Tensor) -> Tensor:
    """splitmix64 finaliser on int64 tensors: a bijection that scrambles every bit."""
    x = (x ^ _shift_right(x, 30)) * _MUL1
    x = (x ^ _shift_right(x, 27)) * _MUL2
    return x ^ _shift_right(x, 31)


def _mix64_int(x: int) -> int:
    """`mix64` of one Python int, as the int64 it gives: no tensor made from Python data per call."""
    x &= _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return _int64(x ^ (x >> 31))


def bits_to_uniform(bits: Tensor) -> Tensor:
    """The top 24 bits of int64 hashes as float32 uniforms in [0, 1)."""
    return _shift_right(bits, 40).to(torch.float32) * _FLOAT24


def _second_uniform(bits: Tensor) -> Tensor:
    """Bits 16..39 of int64 hashes as float32 uniforms in [0, 1), independent of the top 24."""
    return (_shift_right(bits, 16) & 0xFFFFFF).to(torch.float32) * _FLOAT24


def image_keys(seed: int, indices: Tensor, salt: "int | Tensor" = 0) -> Tensor:
    """One int64 key per image from (seed, index, salt); salt separates re-draws."""
    keys = mix64(indices.to(torch.int64) * _GAMMA + _mix64_int(seed))  # (N,)
    if isinstance(salt, Tensor):
        return mix64(keys + salt.to(torch.int64) * _GAMMA)
    return mix64(keys + _int64(salt * _GOLDEN))  # the same wrapped product, computed in Python


class Draws:
    """Per-image random numbers for a batch; each call consumes the next counters.

    Every image gets the same sequence of calls, so draw k means the same thing for every
    image; callers therefore draw all parameters up front with fixed shapes, even those a
    given image will not use.

    A `warp` (proposal.Warp) reshapes the uniforms: the d-th uniform an image draws (counted over
    all `uniform` and `integers` calls) goes through that image's inverse CDF for draw d, which is
    how a fitted proposal steers a program without changing its code. `trace`, a list, collects
    the (N, count) uniforms each call returns (after the warp): what a search fits a proposal to.
    """

    def __init__(self, seed: int, indices: Tensor, salt: "int | Tensor" = 0, warp=None, trace: "list | None" = None):
        self.keys = image_keys(seed, indices, salt)  # (N,) int64
        self.used = 0
        self.warp, self.trace = warp, trace
        self.uniforms = 0  # uniforms returned so far: the index of the next draw for `warp`

    def bits(self, *shape: int) -> Tensor:
        """(N, *shape) int64 hashes."""
        count = math.prod(shape)
        counters = torch.arange(self.used + 1, self.used + 1 + count, device=self.keys.device)
        self.used += count
        keys = self.keys.view(-1, *([1] * len(shape)))
        return mix64(keys + (counters * _GAMMA).view(shape))

    def uniform(self, *shape: int, low: float = 0.0, high: float = 1.0) -> Tensor:
        """(N, *shape) float32 uniform in [low, high); two 24-bit uniforms per hash."""
        count = math.prod(shape)
        bits = self.bits((count + 1) // 2)  # (N, ceil(count / 2))
        pairs = torch.stack([bits_to_uniform(bits), _second_uniform(bits)], -1).flatten(1)
        pairs = pairs[:, :count]
        if self.warp is not None:
            pairs = self.warp(pairs, self.uniforms)
        self.uniforms += count
        if self.trace is not None:
            self.trace.append(pairs)
        return low + (high - low) * pairs.reshape(-1, *shape)

    def integers(self, high: int, *shape: int) -> Tensor:
        """(N, *shape) int64 uniform in [0, high)."""
        return (self.uniform(*shape) * high).to(torch.int64).clamp_(max=high - 1)

    def normal(self, *shape: int) -> Tensor:
        """(N, *shape) float32 standard normal by Box-Muller, two 24-bit uniforms per hash."""
        bits = self.bits(*shape)
        radius_u = 1.0 - bits_to_uniform(bits)  # (0, 1]: log stays finite
        angle_u = _second_uniform(bits)
        # log, sqrt and cos give the same bits in torch's vector and scalar CPU paths
        # (pow, exp2, sigmoid and atan2 do not), so results do not depend on batch layout.
        return torch.sqrt(-2.0 * torch.log(radius_u)) * torch.cos(2 * math.pi * angle_u)
