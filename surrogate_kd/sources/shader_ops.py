"""The shader grammar's ops: coordinate transforms and value functions (shaders.py draws and combines them).

Every op takes (x, y, u, t, key): pixel coordinates x, y (n, H, W), the program's uniforms for
the op u (n, P), its time t and lattice key (n, 1, 1); a transform returns new (x, y), a value
function a value per pixel roughly in [0, 1]. Only ops whose CPU results do not depend on an
element's position in memory are used (see shaders.py), so images stay byte-identical whatever
batch renders them.
"""

import math
from typing import Callable

import torch
from torch import Tensor

from .rng import bits_to_uniform, mix64

TAU = 2 * math.pi
# (x, y, u, t, key) -> (x, y) for transforms, v for value functions; x, y, v (n, H, W), u (n, P), t, key (n, 1, 1)
Op = Callable[..., Tensor | tuple[Tensor, Tensor]]


def param(u: Tensor, j: int, low: float = 0.0, high: float = 1.0) -> Tensor:
    """Per-sample parameter j of u (n, P), mapped to [low, high), shaped (n, 1, 1)."""
    return (low + (high - low) * u[:, j]).view(-1, 1, 1)


def log_param(u: Tensor, j: int, low: float, high: float) -> Tensor:
    """Like `param` but log-uniform: for scales and frequencies."""
    return torch.exp(param(u, j, math.log(low), math.log(high)))


def fract(x: Tensor) -> Tensor:
    return x - torch.floor(x)


def _atan2(y: Tensor, x: Tensor) -> Tensor:
    """atan2 from atan: torch.atan2's CPU result depends on position in memory."""
    safe_x = torch.where(x == 0, 1.0, x)
    angle = torch.atan(y / safe_x)
    half_turn = torch.where(y >= 0, math.pi, -math.pi)
    angle = torch.where(x < 0, angle + half_turn, angle)
    return torch.where(x == 0, torch.where(y >= 0, math.pi / 2, -math.pi / 2), angle)


def rotate(x: Tensor, y: Tensor, angle: Tensor) -> tuple[Tensor, Tensor]:
    cos, sin = torch.cos(angle), torch.sin(angle)
    return x * cos - y * sin, x * sin + y * cos


# Coordinate transforms: (x, y, u (n, 8), t (n, 1, 1), key (n, 1, 1)) -> (x, y).


def _affine(x, y, u, t, key):
    x, y = rotate(x, y, param(u, 0, 0, TAU))
    scale = log_param(u, 1, 0.5, 2.5)
    return x * scale + param(u, 2, -1, 1), y * scale + param(u, 3, -1, 1)


def _polar(x, y, u, t, key):
    radius = torch.sqrt(x * x + y * y)
    repeats = torch.floor(param(u, 0, 1, 7))  # whole turns: the angle seam stays sharp but regular
    return radius * param(u, 1, 1, 4) - 1, _atan2(y, x) * (repeats / math.pi)


def _sine_warp(x, y, u, t, key):
    amplitude, frequency = param(u, 0, 0.05, 0.5), log_param(u, 1, 1.0, 8.0)
    x = x + amplitude * torch.sin(frequency * y + param(u, 2, 0, TAU) + t)
    y = y + amplitude * torch.sin(frequency * x + param(u, 3, 0, TAU) + t)  # warped x: stronger swirls
    return x, y


def _mirror(x, y, u, t, key):
    """Fold the plane across a random line, optionally also mirroring x."""
    angle = param(u, 0, 0, TAU)
    normal_x, normal_y = torch.cos(angle), torch.sin(angle)
    behind = torch.clamp(x * normal_x + y * normal_y - param(u, 1, -0.5, 0.5), max=0.0)
    x, y = x - 2 * behind * normal_x, y - 2 * behind * normal_y
    return torch.where(param(u, 2) < 0.5, x.abs(), x), y


def _tile(x, y, u, t, key):
    """Repeat the plane: sawtooth (hard seams) or triangle wave (mirrored tiles)."""
    repeats = torch.floor(param(u, 0, 1, 4))
    saw_x = fract(x * repeats + param(u, 1)) * 2 - 1
    saw_y = fract(y * repeats + param(u, 2)) * 2 - 1
    mirrored = param(u, 3) < 0.5
    return torch.where(mirrored, saw_x.abs() * 2 - 1, saw_x), torch.where(mirrored, saw_y.abs() * 2 - 1, saw_y)


def _swirl(x, y, u, t, key):
    radius = torch.sqrt(x * x + y * y)
    return rotate(x, y, param(u, 0, -8, 8) * torch.exp(-radius * log_param(u, 1, 0.5, 4.0)) + 0.2 * t)


def _kaleidoscope(x, y, u, t, key):
    """Iterated abs-folds with rotation (Kali-style): self-similar detail at many scales."""
    offset, angle, scale = param(u, 0, 0.1, 0.8), param(u, 1, 0, TAU), param(u, 2, 0.9, 1.3)
    for _ in range(4):
        x, y = rotate(x.abs() - offset, y.abs() - offset, angle)
        x, y = x * scale, y * scale
    return x, y


def _inversion(x, y, u, t, key):
    x, y = x - param(u, 0, -0.5, 0.5), y - param(u, 1, -0.5, 0.5)
    factor = param(u, 2, 0.2, 1.0) / (x * x + y * y + param(u, 3, 0.05, 0.5))
    return x * factor, y * factor


TRANSFORMS: list[Op] = [_affine, _polar, _sine_warp, _mirror, _tile, _swirl, _kaleidoscope, _inversion]


# Value functions: (x, y, u (n, 28), t, key) -> v, roughly in [0, 1] (stretched later).


def _plasma(x, y, u, t, key):
    v = 0.0
    for j in range(3):
        angle = param(u, 3 + j, 0, TAU)
        along = x * torch.cos(angle) + y * torch.sin(angle)
        v = v + torch.sin(log_param(u, j, 1.0, 8.0) * along + param(u, 6 + j, 0, TAU) + t)
    return v / 6 + 0.5


def _rings(x, y, u, t, key):
    dx, dy = x - param(u, 0, -1, 1), y - param(u, 1, -1, 1)
    return 0.5 + 0.5 * torch.sin(torch.sqrt(dx * dx + dy * dy) * log_param(u, 2, 3.0, 25.0) - t)


def _stripes(x, y, u, t, key):
    x, _ = rotate(x, y, param(u, 0, 0, TAU))
    return fract(x * log_param(u, 1, 1.0, 10.0) + t / TAU)


def _checker(x, y, u, t, key):
    """Checkerboard whose tiles hold ramps: hard edges with gradients inside."""
    x, y = rotate(x, y, param(u, 0, 0, TAU))
    frequency = log_param(u, 1, 1.0, 6.0)
    x, y = x * frequency, y * frequency
    parity = torch.remainder(torch.floor(x) + torch.floor(y), 2.0)
    return torch.where(parity > 0, fract(x), 1 - fract(y))


_LATTICE_X, _LATTICE_Y = 0x632BE59BD9B4E019, 0x3C6EF372FE94F82B  # odd, below 2^63


def _lattice(key: Tensor, ix: Tensor, iy: Tensor) -> Tensor:
    """Uniform value per integer lattice point, hashed from the image key (no table)."""
    return bits_to_uniform(mix64(key + ix * _LATTICE_X + iy * _LATTICE_Y))


def _value_noise(key: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """Smoothly interpolated lattice noise in [0, 1)."""
    fx, fy = torch.floor(x), torch.floor(y)
    ix, iy = fx.to(torch.int64), fy.to(torch.int64)
    sx, sy = x - fx, y - fy
    sx, sy = sx * sx * (3 - 2 * sx), sy * sy * (3 - 2 * sy)  # smoothstep: no creases at cell edges
    top = torch.lerp(_lattice(key, ix, iy), _lattice(key, ix + 1, iy), sx)
    bottom = torch.lerp(_lattice(key, ix, iy + 1), _lattice(key, ix + 1, iy + 1), sx)
    return torch.lerp(top, bottom, sy)


def _fbm(x, y, u, t, key, max_octaves: int = 5):
    """Fractal sum of value noise: 1..5 octaves, frequency doubling, random gain."""
    octaves, gain = param(u, 0, 1, max_octaves + 1), param(u, 1, 0.35, 0.75)
    frequency = log_param(u, 2, 1.0, 4.0)
    x, y = x * frequency + t, y * frequency
    v, amplitude, total = 0.0, torch.ones_like(gain), 0.0
    for octave in range(max_octaves):
        weight = amplitude * (octave < octaves)  # octaves past the drawn count weigh 0
        v = v + weight * _value_noise(key + octave, x, y)
        total = total + weight
        x, y, amplitude = x * 2.03, y * 2.03, amplitude * gain  # 2.03: lattices of octaves don't align
    return v / total


def _cells(x, y, u, t, key, points: int = 8):
    """Voronoi on a periodic tile: distance to the nearest point, cell edges, or flat cells."""
    x = x - 2 * torch.floor((x + 1) / 2)  # wrap to [-1, 1): cells everywhere, not only near 0
    y = y - 2 * torch.floor((y + 1) / 2)
    px = u[:, 2 : 2 + points].view(-1, points, 1, 1) * 2 - 1
    py = u[:, 10 : 10 + points].view(-1, points, 1, 1) * 2 - 1
    dx, dy = x.unsqueeze(1) - px, y.unsqueeze(1) - py
    dist = dx * dx + dy * dy  # (n, points, H, W)
    nearest, which = dist.min(1)
    second = dist.scatter(1, which.unsqueeze(1), math.inf).amin(1)
    cell_value = torch.gather(u[:, 18 : 18 + points], 1, which.flatten(1)).view_as(nearest)
    mode = param(u, 0)
    distance, edges = torch.sqrt(nearest), torch.sqrt(second) - torch.sqrt(nearest)
    return torch.where(mode < 0.33, distance, torch.where(mode < 0.66, edges, cell_value))


def _spiral(x, y, u, t, key):
    dx, dy = x - param(u, 0, -0.5, 0.5), y - param(u, 1, -0.5, 0.5)
    arms, twist = torch.floor(param(u, 2, 1, 9)), param(u, 3, -12, 12)
    phase = arms * _atan2(dy, dx) + twist * torch.sqrt(dx * dx + dy * dy) + t
    return 0.5 + 0.5 * torch.sin(phase)


def _julia(x, y, u, t, key, steps: int = 10):
    """Orbit trap of z -> z^2 + c: fractal detail, smooth or filament-like."""
    angle, radius = param(u, 0, 0, TAU) + 0.1 * t, param(u, 1, 0.6, 0.8)
    c_re, c_im = radius * torch.cos(angle), radius * torch.sin(angle)
    zx, zy = x * param(u, 2, 0.8, 1.6), y * param(u, 2, 0.8, 1.6)
    trap = torch.full_like(zx, math.inf)
    cross = param(u, 3) < 0.5  # distance to the axes, or to the origin
    for _ in range(steps):
        zx, zy = (zx * zx - zy * zy + c_re).clamp(-1e3, 1e3), (2 * zx * zy + c_im).clamp(-1e3, 1e3)
        trap = torch.minimum(trap, torch.where(cross, torch.minimum(zx.abs(), zy.abs()), zx * zx + zy * zy))
    return torch.sqrt(trap.clamp(max=1.0))


VALUES: list[Op] = [_plasma, _rings, _stripes, _checker, _fbm, _cells, _spiral, _julia]
