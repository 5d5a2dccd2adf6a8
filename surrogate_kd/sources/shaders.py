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

The grammar's ops live in shader_ops.py. A `proposal` (proposal.py, fitted to a teacher by
adapt.py) reshapes the uniforms every program draws, so that programs land where a teacher's
rare classes are; image i is then a pure function of (seed, i, proposal).

Two strategies (strategy.py), the same bytes on CPU: 'gather' (the CPU default) runs each op on
the images that drew it and redraws only the rejected renders; 'where' (accelerators) runs every
op on every image and renders every attempt of every image at once, picking with torch.where
and the first accepted attempt with argmax: a fixed set of ops whatever the batch, no host sync.

Only ops whose CPU results do not depend on an element's position in memory are used
(sin, cos, exp, log, sqrt, atan, floor and arithmetic; not pow, atan2 or sigmoid), so an
image is byte-identical whatever batch renders it.
"""

import functools
import math

import torch
from torch import Tensor

from ..augment import luminance
from ..errors import UserError
from ..registry import SOURCES
from .pixels import to_uint8, with_channels
from .proposal import Prepared, prepare
from .rng import Draws
from .shader_ops import TAU, TRANSFORMS, VALUES, fract, param, rotate
from .strategy import per_image


def _stretch(x: Tensor) -> Tensor:
    """Min-max normalise each sample (n, ...) to [0, 1]."""
    flat = x.flatten(1)
    low, high = flat.amin(1), flat.amax(1)
    shape = (-1,) + (1,) * (x.dim() - 1)
    return (x - low.view(shape)) / (high - low).clamp(min=1e-6).view(shape)


def _shape_values(v: Tensor, u: Tensor) -> Tensor:
    """Smooth (half the time), hard-edged, posterised, banded or ridged v (n, H, W) in [0, 1]."""
    steps = torch.floor(param(u, 2, 3, 9))
    candidates = torch.stack([
        v,
        0.6 * (v > param(u, 1, 0.3, 0.7)) + 0.4 * v,  # a threshold edge over the gradient
        torch.floor(v * steps) / (steps - 1),
        fract(v * torch.floor(param(u, 3, 2, 7))),
        torch.abs(torch.sin(v * param(u, 4, 1, 4) * math.pi)),
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


def _figure_mask(seed: int, programs: Tensor, attempt: "int | Tensor", size: int, figure: float,
                 warp=None, trace: "list | None" = None) -> Tensor:
    """(n, 1, size, size) in [0, 1]: 1 for plain renders, else a shape's soft-edged inside.

    The shape is a signed distance d (< 0 inside) of an ellipse, a box or a trapezoid with
    half-axes 0.2-0.95 of the half-image, rotated, its centre within 0.3 of the middle; the mask
    ramps linearly over a width of 0.02-0.3 around d = 0 (a ramp, not a sigmoid: see the module
    notes on position-dependent CPU ops). warp, trace: as in `Draws`.
    """
    device = programs.device
    u = Draws(seed, programs, salt=FIGURE_SALT + attempt, warp=warp, trace=trace).uniform(9)
    grid = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) * (2.0 / size) - 1.0
    y = grid.view(1, size, 1) - param(u, 1, -0.3, 0.3)
    x = grid.view(1, 1, size) - param(u, 2, -0.3, 0.3)
    x, y = rotate(x, y, param(u, 3, 0, TAU))
    x, y = x / param(u, 4, 0.2, 0.95), y / param(u, 5, 0.2, 0.95)  # unit-sized shape coordinates
    ellipse = torch.sqrt(x * x + y * y) - 1
    box = torch.maximum(x.abs(), y.abs()) - 1
    trapezoid = torch.maximum(y.abs(), x.abs() - (1.5 - 0.5 * y) * param(u, 6, 0.3, 0.9)) - 1  # one end wider
    distance = torch.where(param(u, 7) < 1 / 3, ellipse, torch.where(param(u, 7) < 2 / 3, box, trapezoid))
    mask = (0.5 - distance / param(u, 8, 0.02, 0.3)).clamp(0.0, 1.0)
    return torch.where(param(u, 0) < figure, mask, torch.ones_like(mask)).unsqueeze(1)


def _render(seed: int, programs: Tensor, attempt: "int | Tensor", time_steps: Tensor, size: int, layers: int,
            figure: float = 0.0, strategy: str = "gather", proposal: "Prepared | None" = None,
            traces: "tuple[list, list] | None" = None) -> Tensor:
    """(n, 3, size, size) float images of programs (n,) at time steps (n,) in [0, 1); attempt: one or (n,).

    proposal: warps every uniform the program and its figure draw (proposal.py); a program's
    component is its own, whatever the attempt. traces: two lists that collect those uniforms.
    """
    n, device = programs.numel(), programs.device
    program_warp = figure_warp = None
    if proposal is not None:
        components = proposal.components(seed, programs)
        program_warp, figure_warp = proposal.program_warp(components), proposal.figure_warp(components)
    program_trace, figure_trace = traces if traces is not None else (None, None)
    # A redraw (attempt) is a new program for the same image.
    draws = Draws(seed, programs, salt=attempt, warp=program_warp, trace=program_trace)
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
    if figure <= 0:
        return rgb
    return rgb * _figure_mask(seed, programs, attempt, size, figure, figure_warp, figure_trace)


@functools.lru_cache(maxsize=None)
def draw_counts(layers: int) -> tuple[int, int]:
    """(uniforms a program draws, uniforms its figure draws) at `layers`: the dimensions of a proposal.

    Counted by tracing one tiny render, so that the count follows `_render` wherever it changes.
    """
    traces: tuple[list, list] = ([], [])
    _render(0, torch.zeros(1, dtype=torch.int64), 0, torch.zeros(1), 2, layers, figure=1.0, traces=traces)
    return tuple(sum(u.shape[1] for u in trace) for trace in traces)


def first_renders(seed: int, indices: Tensor, size: int, channels: int, layers: int = 3, figure: float = 1.0,
                  proposal: "dict | None" = None) -> tuple[Tensor, Tensor, Tensor]:
    """What a search over proposals needs: the first render (attempt 0) of programs `indices`, no filter.

    Returns images uint8 (N, channels, size, size), the uniforms each program drew (N, D_program +
    D_figure) after the proposal's warp, and each program's component (N,) int64 (zeros without a
    proposal). A render that `is_simple` flags would be redrawn by `shaders`; the caller checks.
    """
    prepared = _prepare(proposal, layers, figure, indices.device)
    traces: tuple[list, list] = ([], [])
    rgb = _render(seed, indices, 0, torch.zeros(indices.numel(), device=indices.device), size, layers,
                  float(figure), proposal=prepared, traces=traces)
    uniforms = torch.cat(traces[0] + (traces[1] if figure > 0 else []), 1)
    components = (prepared.components(seed, indices) if prepared is not None
                  else torch.zeros(indices.numel(), dtype=torch.int64, device=indices.device))
    return to_uint8(with_channels(rgb, channels)), uniforms, components


def _prepare(proposal: "dict | None", layers: int, figure: float, device: torch.device) -> "Prepared | None":
    if proposal is None:
        return None
    return prepare(proposal, {"layers": layers, "figure": figure}, *draw_counts(layers), device)


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
    proposal: "dict | None" = None,
) -> Tensor:
    """uint8 (N, channels, size, size) shader-like images.

    layers: at most this many coordinate transforms per program (each draws 1..layers).
    frames: consecutive images i share program i // frames at time steps (i % frames) / frames.
    min_std, min_colors: the `is_simple` filter; attempts: renders tried before keeping a
    simple one (1 turns the filter off).
    figure: the share of programs drawn as a figure on a black ground (0: all full-frame).
    proposal: a fitted reshaping of the programs' draws (proposal.py; adapt.fit_proposal makes one
    for a teacher); None draws the plain programs.
    """
    if not (isinstance(layers, int) and layers >= 1):
        raise UserError(f"shaders needs layers >= 1, got {layers!r}")
    if not (isinstance(frames, int) and frames >= 1):
        raise UserError(f"shaders needs frames >= 1, got {frames!r}")
    if not (isinstance(attempts, int) and attempts >= 1):
        raise UserError(f"shaders needs attempts >= 1, got {attempts!r}")
    if not (isinstance(figure, (int, float)) and 0 <= figure <= 1):
        raise UserError(f"shaders needs 0 <= figure <= 1, got {figure!r}")
    prepared = _prepare(proposal, layers, figure, device)
    programs, time_steps = indices // frames, (indices % frames).to(torch.float32) / frames
    if strategy == "where":
        return _every_attempt(seed, programs, time_steps, size, channels, layers, min_std, min_colors, attempts,
                              float(figure), prepared)  # fmt: skip
    out = torch.empty((indices.numel(), channels, size, size), dtype=torch.uint8, device=device)
    todo = torch.arange(indices.numel(), device=device)  # rows still without an accepted render
    for attempt in range(attempts):
        rgb = _render(seed, programs[todo], attempt, time_steps[todo], size, layers, float(figure), proposal=prepared)
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
                   min_std: float, min_colors: int, attempts: int, figure: float,
                   proposal: "Prepared | None" = None) -> Tensor:
    """uint8 (n, channels, size, size): the first accepted of `attempts` renders, all rendered at once.

    The same images as redrawing only the rejected renders (the 'gather' loop in `shaders`), for
    `attempts` times the work (about 13% of first renders are rejected), but with a fixed set of
    ops and no host sync: which attempt an image keeps is an argmax, not a data-dependent loop.
    """
    n = programs.numel()
    attempt = torch.arange(attempts * n, device=programs.device) // n  # (A*n,) attempt-major
    rgb = _render(seed, programs.repeat(attempts), attempt, time_steps.repeat(attempts), size, layers, figure,
                  strategy="where", proposal=proposal)  # fmt: skip
    images = to_uint8(with_channels(rgb, channels))  # (A*n, C, H, W) uint8
    last = torch.arange(attempts, device=programs.device).view(-1, 1) == attempts - 1
    accepted = ~is_simple(images, min_std, min_colors).view(attempts, n) | last  # out of attempts: the last stays
    first = accepted.to(torch.uint8).argmax(0)  # (n,) the first accepted attempt (argmax returns the first maximum)
    return images.view(attempts, n, *images.shape[1:])[first, torch.arange(n, device=programs.device)]
