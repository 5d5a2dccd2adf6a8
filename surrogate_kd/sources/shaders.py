"""Shader-like procedural images: one random program per image, rendered batched in torch.

The paper rendered 1,089 TwiGL fragment shaders and noted that more programs would add
diversity. Here every image draws its own program from a small grammar, so the number of
programs is unbounded:

    coordinates (x, y) in [-1, 1]^2
      -> 1..layers coordinate transforms (affine, polar, sine warp, mirror fold, tiling,
         swirl, kaleidoscope folds, circle inversion)
      -> a value function (plasma, rings, stripes, checker, value-noise fbm, Voronoi cells,
         spirals, Julia orbit traps)
      -> a shaping (smooth, thresholded edge, posterised, contour bands, ridges)
      -> a cosine palette a + b*cos(2*pi*(c*t + d)) (or gray), stretched, random gamma
      -> for a share `figure` of the programs (default all), a figure: the render seen through a
         signed-distance shape (ellipse, box or trapezoid, any size, angle and place, soft or
         hard edge) on a black ground, the fragment-shader idiom for drawing objects.

Full-frame textures alone leave most of a teacher's classes unvisited when its classes are
shapes on a plain ground (the Fashion-MNIST demo teacher called 85% of them "bag"); figures
visit them: relative entropy 0.26 -> 0.85, and a better student (docs/sources.md). `figure=0`
gives the paper's full-frame renders.

Renders that `is_simple` flags (the paper's constant or near-constant shaders) are redrawn
with the next attempt number, so image i stays a pure function of (seed, i).

Two strategies (strategy.py), the same bytes on CPU: 'gather' (the CPU default) runs each op on
the images that drew it and redraws only the rejected renders; 'where' (accelerators) runs every
op on every image and renders every attempt of every image at once, picking with torch.where
and the first accepted attempt with argmax: a fixed set of ops whatever the batch, no host sync.

Only ops whose CPU results do not depend on an element's position in memory are used
(sin, cos, exp, log, sqrt, atan, floor and arithmetic; not pow, atan2 or sigmoid), so an
image is byte-identical whatever batch renders it.
"""

import math
from typing import Callable

import torch
from torch import Tensor

from ..augment import luminance
from ..errors import UserError
from ..registry import SOURCES
from .pixels import to_uint8, with_channels
from .rng import Draws, bits_to_uniform, mix64
from .strategy import per_image

TAU = 2 * math.pi
# (x, y, u, t, key) -> (x, y) for transforms, v for value functions; x, y, v (n, H, W), u (n, P), t, key (n, 1, 1)
Op = Callable[..., Tensor | tuple[Tensor, Tensor]]


def _col(u: Tensor, j: int, low: float = 0.0, high: float = 1.0) -> Tensor:
    """Per-sample parameter j of u (n, P), mapped to [low, high), shaped (n, 1, 1)."""
    return (low + (high - low) * u[:, j]).view(-1, 1, 1)


def _log_col(u: Tensor, j: int, low: float, high: float) -> Tensor:
    """Like `_col` but log-uniform: for scales and frequencies."""
    return torch.exp(_col(u, j, math.log(low), math.log(high)))


def _fract(x: Tensor) -> Tensor:
    return x - torch.floor(x)


def _atan2(y: Tensor, x: Tensor) -> Tensor:
    """atan2 from atan: torch.atan2's CPU result depends on position in memory."""
    safe_x = torch.where(x == 0, 1.0, x)
    angle = torch.atan(y / safe_x)
    half_turn = torch.where(y >= 0, math.pi, -math.pi)
    angle = torch.where(x < 0, angle + half_turn, angle)
    return torch.where(x == 0, torch.where(y >= 0, math.pi / 2, -math.pi / 2), angle)


def _rotate(x: Tensor, y: Tensor, angle: Tensor) -> tuple[Tensor, Tensor]:
    cos, sin = torch.cos(angle), torch.sin(angle)
    return x * cos - y * sin, x * sin + y * cos


# Coordinate transforms: (x, y, u (n, 8), t (n, 1, 1), key (n, 1, 1)) -> (x, y).


def _affine(x, y, u, t, key):
    x, y = _rotate(x, y, _col(u, 0, 0, TAU))
    scale = _log_col(u, 1, 0.5, 2.5)
    return x * scale + _col(u, 2, -1, 1), y * scale + _col(u, 3, -1, 1)


def _polar(x, y, u, t, key):
    radius = torch.sqrt(x * x + y * y)
    repeats = torch.floor(_col(u, 0, 1, 7))  # whole turns: the angle seam stays sharp but regular
    return radius * _col(u, 1, 1, 4) - 1, _atan2(y, x) * (repeats / math.pi)


def _sine_warp(x, y, u, t, key):
    amplitude, frequency = _col(u, 0, 0.05, 0.5), _log_col(u, 1, 1.0, 8.0)
    x = x + amplitude * torch.sin(frequency * y + _col(u, 2, 0, TAU) + t)
    y = y + amplitude * torch.sin(frequency * x + _col(u, 3, 0, TAU) + t)  # warped x: stronger swirls
    return x, y


def _mirror(x, y, u, t, key):
    """Fold the plane across a random line, optionally also mirroring x."""
    angle = _col(u, 0, 0, TAU)
    normal_x, normal_y = torch.cos(angle), torch.sin(angle)
    behind = torch.clamp(x * normal_x + y * normal_y - _col(u, 1, -0.5, 0.5), max=0.0)
    x, y = x - 2 * behind * normal_x, y - 2 * behind * normal_y
    return torch.where(_col(u, 2) < 0.5, x.abs(), x), y


def _tile(x, y, u, t, key):
    """Repeat the plane: sawtooth (hard seams) or triangle wave (mirrored tiles)."""
    repeats = torch.floor(_col(u, 0, 1, 4))
    saw_x = _fract(x * repeats + _col(u, 1)) * 2 - 1
    saw_y = _fract(y * repeats + _col(u, 2)) * 2 - 1
    mirrored = _col(u, 3) < 0.5
    return torch.where(mirrored, saw_x.abs() * 2 - 1, saw_x), torch.where(mirrored, saw_y.abs() * 2 - 1, saw_y)


def _swirl(x, y, u, t, key):
    radius = torch.sqrt(x * x + y * y)
    return _rotate(x, y, _col(u, 0, -8, 8) * torch.exp(-radius * _log_col(u, 1, 0.5, 4.0)) + 0.2 * t)


def _kaleidoscope(x, y, u, t, key):
    """Iterated abs-folds with rotation (Kali-style): self-similar detail at many scales."""
    offset, angle, scale = _col(u, 0, 0.1, 0.8), _col(u, 1, 0, TAU), _col(u, 2, 0.9, 1.3)
    for _ in range(4):
        x, y = _rotate(x.abs() - offset, y.abs() - offset, angle)
        x, y = x * scale, y * scale
    return x, y


def _inversion(x, y, u, t, key):
    x, y = x - _col(u, 0, -0.5, 0.5), y - _col(u, 1, -0.5, 0.5)
    factor = _col(u, 2, 0.2, 1.0) / (x * x + y * y + _col(u, 3, 0.05, 0.5))
    return x * factor, y * factor


TRANSFORMS: list[Op] = [_affine, _polar, _sine_warp, _mirror, _tile, _swirl, _kaleidoscope, _inversion]


# Value functions: (x, y, u (n, 28), t, key) -> v, roughly in [0, 1] (stretched later).


def _plasma(x, y, u, t, key):
    v = 0.0
    for j in range(3):
        angle = _col(u, 3 + j, 0, TAU)
        along = x * torch.cos(angle) + y * torch.sin(angle)
        v = v + torch.sin(_log_col(u, j, 1.0, 8.0) * along + _col(u, 6 + j, 0, TAU) + t)
    return v / 6 + 0.5


def _rings(x, y, u, t, key):
    dx, dy = x - _col(u, 0, -1, 1), y - _col(u, 1, -1, 1)
    return 0.5 + 0.5 * torch.sin(torch.sqrt(dx * dx + dy * dy) * _log_col(u, 2, 3.0, 25.0) - t)


def _stripes(x, y, u, t, key):
    x, _ = _rotate(x, y, _col(u, 0, 0, TAU))
    return _fract(x * _log_col(u, 1, 1.0, 10.0) + t / TAU)


def _checker(x, y, u, t, key):
    """Checkerboard whose tiles hold ramps: hard edges with gradients inside."""
    x, y = _rotate(x, y, _col(u, 0, 0, TAU))
    frequency = _log_col(u, 1, 1.0, 6.0)
    x, y = x * frequency, y * frequency
    parity = torch.remainder(torch.floor(x) + torch.floor(y), 2.0)
    return torch.where(parity > 0, _fract(x), 1 - _fract(y))


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
    octaves, gain = _col(u, 0, 1, max_octaves + 1), _col(u, 1, 0.35, 0.75)
    frequency = _log_col(u, 2, 1.0, 4.0)
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
    mode = _col(u, 0)
    distance, edges = torch.sqrt(nearest), torch.sqrt(second) - torch.sqrt(nearest)
    return torch.where(mode < 0.33, distance, torch.where(mode < 0.66, edges, cell_value))


def _spiral(x, y, u, t, key):
    dx, dy = x - _col(u, 0, -0.5, 0.5), y - _col(u, 1, -0.5, 0.5)
    arms, twist = torch.floor(_col(u, 2, 1, 9)), _col(u, 3, -12, 12)
    phase = arms * _atan2(dy, dx) + twist * torch.sqrt(dx * dx + dy * dy) + t
    return 0.5 + 0.5 * torch.sin(phase)


def _julia(x, y, u, t, key, steps: int = 10):
    """Orbit trap of z -> z^2 + c: fractal detail, smooth or filament-like."""
    angle, radius = _col(u, 0, 0, TAU) + 0.1 * t, _col(u, 1, 0.6, 0.8)
    c_re, c_im = radius * torch.cos(angle), radius * torch.sin(angle)
    zx, zy = x * _col(u, 2, 0.8, 1.6), y * _col(u, 2, 0.8, 1.6)
    trap = torch.full_like(zx, math.inf)
    cross = _col(u, 3) < 0.5  # distance to the axes, or to the origin
    for _ in range(steps):
        zx, zy = (zx * zx - zy * zy + c_re).clamp(-1e3, 1e3), (2 * zx * zy + c_im).clamp(-1e3, 1e3)
        trap = torch.minimum(trap, torch.where(cross, torch.minimum(zx.abs(), zy.abs()), zx * zx + zy * zy))
    return torch.sqrt(trap.clamp(max=1.0))


VALUES: list[Op] = [_plasma, _rings, _stripes, _checker, _fbm, _cells, _spiral, _julia]


def _stretch(x: Tensor) -> Tensor:
    """Min-max normalise each sample (n, ...) to [0, 1]."""
    flat = x.flatten(1)
    low, high = flat.amin(1), flat.amax(1)
    shape = (-1,) + (1,) * (x.dim() - 1)
    return (x - low.view(shape)) / (high - low).clamp(min=1e-6).view(shape)


def _shape_values(v: Tensor, u: Tensor) -> Tensor:
    """Smooth (half the time), hard-edged, posterised, banded or ridged v (n, H, W) in [0, 1]."""
    steps = torch.floor(_col(u, 2, 3, 9))
    candidates = torch.stack([
        v,
        0.6 * (v > _col(u, 1, 0.3, 0.7)) + 0.4 * v,  # a threshold edge over the gradient
        torch.floor(v * steps) / (steps - 1),
        _fract(v * torch.floor(_col(u, 3, 2, 7))),
        torch.abs(torch.sin(v * _col(u, 4, 1, 4) * math.pi)),
    ])  # fmt: skip
    choice = sum((u[:, 0] > edge).to(torch.int64) for edge in (0.5, 0.625, 0.75, 0.875))  # as bucketize would
    return candidates[choice, torch.arange(v.shape[0], device=v.device)].clamp(0.0, 1.0)


def _colourise(v: Tensor, u: Tensor) -> Tensor:
    """(n, H, W) values -> (n, 3, H, W) in [0, 1]: cosine palette or gray, stretch, gamma."""
    a, b = u[:, 0:3].view(-1, 3, 1, 1) * 0.4 + 0.3, u[:, 3:6].view(-1, 3, 1, 1) * 0.25 + 0.25
    c = torch.exp(u[:, 6:9].view(-1, 3, 1, 1) * math.log(8.0) - math.log(2.0))  # 0.5..4 cycles
    d = u[:, 9:12].view(-1, 3, 1, 1)
    values = v.unsqueeze(1)  # (n, 1, H, W)
    rgb = a + b * torch.cos(TAU * (c * values + d))
    rgb = torch.where(u[:, 12].view(-1, 1, 1, 1) < 0.1, values.expand_as(rgb), rgb)
    rgb = _stretch(rgb)
    gamma = torch.exp(u[:, 13].view(-1, 1, 1, 1) * (2 * math.log(2.0)) - math.log(2.0))  # 0.5..2
    return torch.exp(gamma * torch.log(rgb + 1e-4))  # x**gamma; pow is position-dependent on CPU


FIGURE_SALT = 0x46494755  # the figure's draws have their own stream: plain renders stay as they were


def _figure_mask(seed: int, programs: Tensor, attempt: "int | Tensor", size: int, figure: float) -> Tensor:
    """(n, 1, size, size) in [0, 1]: 1 for plain renders, else a shape's soft-edged inside.

    The shape is a signed distance d (< 0 inside) of an ellipse, a box or a trapezoid with
    half-axes 0.2-0.95 of the half-image, rotated, its centre within 0.3 of the middle; the mask
    ramps linearly over a width of 0.02-0.3 around d = 0 (a ramp, not a sigmoid: see the module
    notes on position-dependent CPU ops).
    """
    n, device = programs.numel(), programs.device
    u = Draws(seed, programs, salt=FIGURE_SALT + attempt).uniform(9)
    grid = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) * (2.0 / size) - 1.0
    y = grid.view(1, size, 1) - _col(u, 1, -0.3, 0.3)
    x = grid.view(1, 1, size) - _col(u, 2, -0.3, 0.3)
    x, y = _rotate(x, y, _col(u, 3, 0, TAU))
    x, y = x / _col(u, 4, 0.2, 0.95), y / _col(u, 5, 0.2, 0.95)  # unit-sized shape coordinates
    ellipse = torch.sqrt(x * x + y * y) - 1
    box = torch.maximum(x.abs(), y.abs()) - 1
    trapezoid = torch.maximum(y.abs(), x.abs() - (1.5 - 0.5 * y) * _col(u, 6, 0.3, 0.9)) - 1  # one end wider
    distance = torch.where(_col(u, 7) < 1 / 3, ellipse, torch.where(_col(u, 7) < 2 / 3, box, trapezoid))
    mask = (0.5 - distance / _col(u, 8, 0.02, 0.3)).clamp(0.0, 1.0)
    return torch.where(_col(u, 0) < figure, mask, torch.ones_like(mask)).unsqueeze(1)


def _render(seed: int, programs: Tensor, attempt: "int | Tensor", time_steps: Tensor, size: int, layers: int,
            figure: float = 0.0, strategy: str = "gather") -> Tensor:
    """(n, 3, size, size) float images of programs (n,) at time steps (n,) in [0, 1); attempt: one or (n,)."""
    n, device = programs.numel(), programs.device
    draws = Draws(seed, programs, salt=attempt)  # a redraw is a new program for the same image
    active = draws.integers(layers) + 1  # (n,) number of transform layers used
    layer_ops = draws.integers(len(TRANSFORMS), layers)  # (n, L)
    layer_params = draws.uniform(layers, 8)  # (n, L, 8)
    value_op, value_params = draws.integers(len(VALUES)), draws.uniform(28)
    shape_params, colour_params = draws.uniform(5), draws.uniform(14)
    time = (TAU * (draws.uniform() + time_steps)).view(-1, 1, 1)  # cyclic: the paper's time steps
    key = draws.bits().view(-1, 1, 1)  # per-program seed of the lattice noise

    grid = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) * (2.0 / size) - 1.0
    y = grid.view(1, size, 1).expand(n, size, size)
    x = grid.view(1, 1, size).expand(n, size, size)
    # Choice 0, a layer past `active`, leaves x, y as they are.
    transforms = {k + 1: op for k, op in enumerate(TRANSFORMS)}
    for layer in range(layers):
        choice = torch.where(layer < active, layer_ops[:, layer] + 1, 0)
        x, y = per_image(choice, transforms, x, y, layer_params[:, layer], time, key, outputs=2, strategy=strategy)
    values = dict(enumerate(VALUES))
    v = per_image(value_op, values, x, y, value_params, time, key, strategy=strategy)  # replaces x: a value per pixel
    v = torch.nan_to_num(v, nan=0.0, posinf=1.0, neginf=0.0)
    v = _shape_values(_stretch(v), shape_params)
    rgb = _colourise(v, colour_params)
    return rgb * _figure_mask(seed, programs, attempt, size, figure) if figure > 0 else rgb


def is_simple(images: Tensor, min_std: float = 0.04, min_colors: int = 3, min_share: float = 0.01) -> Tensor:
    """bool (N,): images (N, C, H, W) uint8 that are near-constant or have too few colours.

    The paper drops shader renders that are constant or "simple" (two colours, or few
    coloured pixels). Measured here as: standard deviation of luminance (in [0, 1]) below
    min_std, or fewer than min_colors colours that each cover at least min_share of the
    pixels, after quantising every channel to 8 levels (so a flat image with a few stray
    pixels counts as one colour).
    """
    n, channels = images.shape[:2]
    gray = images.float() / 255.0
    gray = luminance(gray) if channels == 3 else gray
    std = gray.flatten(1).std(1, correction=0)
    levels = (images >> 5).to(torch.int64)  # (N, C, H, W) in 0..7
    code = levels[:, 0]
    for c in range(1, channels):
        code = code * 8 + levels[:, c]
    code = code.flatten(1)  # (N, H*W) quantised colour of each pixel
    counts = torch.zeros(n, 8**channels, dtype=torch.int64, device=images.device)
    counts.scatter_add_(1, code, torch.ones_like(code))
    colors = (counts >= max(1.0, min_share * code.shape[1])).sum(1)
    return (std < min_std) | (colors < min_colors)


@SOURCES.register("shaders")
def shaders(
    seed: int,
    indices: Tensor,
    size: int,
    channels: int,
    device: torch.device,
    strategy: str,
    layers: int = 3,
    frames: int = 1,
    min_std: float = 0.04,
    min_colors: int = 3,
    attempts: int = 8,
    figure: float = 1.0,
) -> Tensor:
    """uint8 (N, channels, size, size) shader-like images.

    layers: at most this many coordinate transforms per program (each draws 1..layers).
    frames: consecutive images i share program i // frames at time steps (i % frames) / frames.
    min_std, min_colors: the `is_simple` filter; attempts: renders tried before keeping a
    simple one (1 turns the filter off).
    figure: the share of programs drawn as a figure on a black ground (0: all full-frame).
    """
    if not (isinstance(layers, int) and layers >= 1):
        raise UserError(f"shaders needs layers >= 1, got {layers!r}")
    if not (isinstance(frames, int) and frames >= 1):
        raise UserError(f"shaders needs frames >= 1, got {frames!r}")
    if not (isinstance(attempts, int) and attempts >= 1):
        raise UserError(f"shaders needs attempts >= 1, got {attempts!r}")
    if not (isinstance(figure, (int, float)) and 0 <= figure <= 1):
        raise UserError(f"shaders needs 0 <= figure <= 1, got {figure!r}")
    programs, time_steps = indices // frames, (indices % frames).to(torch.float32) / frames
    if strategy == "where":
        return _every_attempt(seed, programs, time_steps, size, channels, layers, min_std, min_colors, attempts,
                              float(figure))  # fmt: skip
    out = torch.empty((indices.numel(), channels, size, size), dtype=torch.uint8, device=device)
    todo = torch.arange(indices.numel(), device=device)  # rows still without an accepted render
    for attempt in range(attempts):
        rgb = _render(seed, programs[todo], attempt, time_steps[todo], size, layers, float(figure))
        images = to_uint8(with_channels(rgb, channels))  # (n, C, H, W) uint8
        keep = ~is_simple(images, min_std, min_colors)
        if attempt == attempts - 1:
            keep[:] = True  # out of attempts: keep the last render
        out[todo[keep]] = images[keep]
        todo = todo[~keep]
        if todo.numel() == 0:
            break
    return out


def _every_attempt(seed: int, programs: Tensor, time_steps: Tensor, size: int, channels: int, layers: int,
                   min_std: float, min_colors: int, attempts: int, figure: float) -> Tensor:
    """uint8 (n, channels, size, size): the first accepted of `attempts` renders, all rendered at once.

    The same images as redrawing only the rejected renders (the 'gather' loop in `shaders`), for
    `attempts` times the work (about 13% of first renders are rejected), but with a fixed set of
    ops and no host sync: which attempt an image keeps is an argmax, not a data-dependent loop.
    """
    n = programs.numel()
    attempt = torch.arange(attempts * n, device=programs.device) // n  # (A*n,) attempt-major
    rgb = _render(seed, programs.repeat(attempts), attempt, time_steps.repeat(attempts), size, layers, figure,
                  strategy="where")  # fmt: skip
    images = to_uint8(with_channels(rgb, channels))  # (A*n, C, H, W) uint8
    last = torch.arange(attempts, device=programs.device).view(-1, 1) == attempts - 1
    accepted = ~is_simple(images, min_std, min_colors).view(attempts, n) | last  # out of attempts: the last stays
    first = accepted.to(torch.uint8).argmax(0)  # (n,) the first accepted attempt (argmax returns the first maximum)
    return images.view(attempts, n, *images.shape[1:])[first, torch.arange(n, device=programs.device)]
