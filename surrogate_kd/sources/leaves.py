"""Dead-leaves images (Baradad et al. 2021): flat-coloured shapes stacked until the canvas is covered.

Shapes are circles, squares, rotated squares, rotated rectangles and rotated equilateral
triangles with uniformly random colours and a size ("radius": circumradius of triangles,
half-side of squares and rectangles) drawn from a power law p(r) ~ r^-exponent between
min_radius and max_radius times the image size. A fixed, generous number of shapes is
painted back to front; the few pixels no shape reaches keep a random background colour
(about 0.3% of them with the defaults).

Rasterising every shape over the whole canvas would cost shapes x pixels per image. Instead
each shape is cut into one horizontal span per pixel row it touches (the span's ends solved
in closed form: a circle, or the intersection of a convex polygon's half-planes), the spans
of a whole batch are expanded into one flat list of covered pixels, and each pixel keeps the
topmost shape by a scatter-max over shape order. The work is proportional to the painted
area, not to shapes x pixels.
"""

import math

import torch
from torch import Tensor

from ..errors import UserError
from . import SOURCES, to_uint8
from .rng import Draws

CIRCLE, SQUARE, ROTATED_SQUARE, RECTANGLE, TRIANGLE = range(5)
_KINDS = 5
_SIN60 = math.sqrt(3) / 2

# Polygons as half-planes n . (u, v) <= radius * offset in the shape's own frame (u, v).
_BOX_NORMALS = ((1.0, 0.0), (-1.0, 0.0), (0.0, 1.0), (0.0, -1.0))  # half-sides 1, 1, aspect, aspect
# Equilateral triangle of circumradius 1: edges at distance 1/2; the 4th plane never binds.
_TRIANGLE_NORMALS = ((0.0, 1.0), (-_SIN60, -0.5), (_SIN60, -0.5), (0.0, 0.0))
_TRIANGLE_VERTICES = ((0.0, -1.0), (_SIN60, 0.5), (-_SIN60, 0.5))


def power_law_radius(u: Tensor, low: float, high: float, exponent: float) -> Tensor:
    """Inverse CDF of p(r) ~ r^-exponent on [low, high], applied to uniforms u."""
    if exponent == 1.0:
        return low * torch.exp(u * math.log(high / low))
    k = 1.0 - exponent
    # exp/log instead of pow: pow's CPU result depends on the element's position in memory.
    return torch.exp(torch.log(low**k + u * (high**k - low**k)) / k)


def _edge_lines(kind: Tensor, radius: Tensor, aspect: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """(M, 4, 2) lines (alpha, beta): at vertical offset dy, each polygon spans
    max(left lines) <= dx <= min(right lines), a line bounding dx by alpha + beta * dy.

    Lines 0-1 bound from the left, 2-3 from the right (+-inf where a polygon has fewer);
    horizontal edges bound no dx and are left to the shape's row range.
    """
    is_triangle = (kind == TRIANGLE).view(-1, 1, 1)
    device = kind.device
    normals = torch.where(is_triangle, torch.tensor(_TRIANGLE_NORMALS, device=device),
                          torch.tensor(_BOX_NORMALS, device=device))  # fmt: skip
    box_offsets = torch.stack([radius, radius, radius * aspect, radius * aspect], -1)
    offsets = torch.where(is_triangle.view(-1, 1), torch.tensor([0.5, 0.5, 0.5, math.inf], device=device) * radius.unsqueeze(-1),
                          box_offsets)  # fmt: skip
    nu, nv = normals.unbind(-1)
    cos, sin = cos.unsqueeze(-1), sin.unsqueeze(-1)
    # u = dx cos + dy sin, v = dy cos - dx sin, so n . (u, v) <= o reads a dx + b dy <= o.
    a, b = nu * cos - nv * sin, nu * sin + nv * cos
    a, order = torch.sort(a, dim=-1, stable=True)  # left-bounding (a < 0) planes first
    b, offsets = b.gather(-1, order), offsets.gather(-1, order)
    slanted = a.abs() > 1e-6
    alpha = torch.where(slanted, offsets / torch.where(slanted, a, 1.0), 0.0)
    beta = torch.where(slanted, -b / torch.where(slanted, a, 1.0), 0.0)
    ignore = torch.tensor([-math.inf, -math.inf, math.inf, math.inf], device=device)  # a line that never binds
    side_ok = torch.tensor([True, True, False, False], device=device) == (a < 0)
    alpha = torch.where(slanted & side_ok & torch.isfinite(alpha), alpha, ignore)
    return torch.stack([alpha, torch.where(torch.isfinite(alpha), beta, 0.0)], -1)


def _vertical_reach(kind: Tensor, radius: Tensor, aspect: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
    """Lowest and highest dy of each shape (image y = u sin + v cos in its frame)."""
    box = radius * (sin.abs() + aspect * cos.abs())
    vertex_y = torch.stack([u * sin + v * cos for u, v in _TRIANGLE_VERTICES], -1) * radius.unsqueeze(-1)
    up = torch.where(kind == TRIANGLE, vertex_y.amin(-1), torch.where(kind == CIRCLE, -radius, -box))
    down = torch.where(kind == TRIANGLE, vertex_y.amax(-1), torch.where(kind == CIRCLE, radius, box))
    return up, down


@SOURCES.register("leaves")
def leaves(
    seed: int,
    indices: Tensor,
    size: int,
    channels: int,
    device: torch.device,
    shapes: int = 400,
    min_radius: float = 0.03,
    max_radius: float = 1.0,
    exponent: float = 3.0,
) -> Tensor:
    """uint8 (N, channels, size, size) dead-leaves images."""
    if not (isinstance(shapes, int) and shapes >= 1):
        raise UserError(f"leaves needs shapes >= 1, got {shapes!r}")
    if not 0 < min_radius <= max_radius:
        raise UserError(f"leaves needs 0 < min_radius <= max_radius, got {min_radius}, {max_radius}")
    n, s, pixels = indices.numel(), shapes, size * size
    draws = Draws(seed, indices)
    centre_x, centre_y, radius_u, kind_u, angle_u, aspect_u = draws.uniform(s, 6).flatten(0, 1).unbind(-1)  # (N*S,)
    colours = draws.uniform(s + 1, channels)  # (N, S + 1, C); the last one is the background
    kind = (kind_u * _KINDS).to(torch.int64).clamp_(max=_KINDS - 1)
    radius = power_law_radius(radius_u, min_radius, max_radius, exponent)
    angle = torch.where((kind == SQUARE) | (kind == CIRCLE), 0.0, angle_u * (2 * math.pi))
    aspect = torch.where(kind == RECTANGLE, 0.25 + 0.75 * aspect_u, 1.0)
    cos, sin = torch.cos(angle), torch.sin(angle)
    lines = _edge_lines(kind, radius, aspect, cos, sin)  # (N*S, 4, 2)
    up, down = _vertical_reach(kind, radius, aspect, cos, sin)

    # Pixel rows each shape covers (pixel p's centre is at (p + 0.5) / size).
    top = torch.ceil((centre_y + up) * size - 0.5).clamp_(0, size).to(torch.int64)
    bottom = torch.floor((centre_y + down) * size - 0.5).clamp_(-1, size - 1).to(torch.int64)
    rows_per_shape = (bottom - top + 1).clamp_(min=0)

    # One span per (shape, row), every shape's rows back to back; a row's span is
    # max(left lines) <= dx <= min(right lines), or |dx| <= sqrt(r^2 - dy^2) for circles.
    shape_of_row = torch.repeat_interleave(torch.arange(n * s, device=device), rows_per_shape)  # (R,)
    first_row = torch.cumsum(rows_per_shape, 0) - rows_per_shape
    is_circle = (kind == CIRCLE).to(torch.float32)
    per_shape = torch.cat([lines.flatten(1), torch.stack([centre_x, centre_y, radius, is_circle], -1)], -1)
    per_row = per_shape.index_select(0, shape_of_row)  # (R, 12); index_select: far faster than x[idx] on CPU
    alpha, beta = per_row[:, 0:8:2], per_row[:, 1:8:2]  # (R, 4)
    row_x, row_y, row_radius, row_circle = per_row[:, 8:].unbind(-1)
    row = (top - first_row).index_select(0, shape_of_row) + torch.arange(shape_of_row.numel(), device=device)
    dy = (row.to(torch.float32) + 0.5) / size - row_y
    bounds = alpha + beta * dy.unsqueeze(-1)
    half_chord = torch.sqrt((row_radius * row_radius - dy * dy).clamp(min=0.0))
    left = torch.where(row_circle > 0, -half_chord, bounds[:, :2].amax(-1))
    right = torch.where(row_circle > 0, half_chord, bounds[:, 2:].amin(-1))
    span_x = row_x * size - 0.5
    first_col = torch.ceil(span_x + left * size).clamp(0, size).to(torch.int64)
    last_col = torch.floor(span_x + right * size).clamp(-1, size - 1).to(torch.int64)
    span_width = (last_col - first_col + 1).clamp_(min=0)

    # Paint back to front: each pixel shows the largest shape index covering it. Rather than
    # expanding spans into pixels, each span writes its max into two power-of-two blocks that
    # exactly cover it (as in a sparse table), and blocks are pushed down level by level.
    levels = max(1, size.bit_length())  # block lengths 1, 2, ..., 2^(levels-1) <= size
    log_width = sum((span_width >= (1 << k)).to(torch.int64) for k in range(1, levels))  # floor(log2 w)
    block = torch.bitwise_left_shift(torch.ones_like(log_width), log_width)
    line = (shape_of_row // s) * size + row  # (R,) image row across the batch
    slot = (log_width * (n * size) + line) * size  # start of this span's row in its level
    # Empty spans still write, harmlessly: order -1 at a clamped column.
    starts = torch.cat([first_col.clamp(max=size - 1), (last_col - block + 1).clamp(min=0)]) + slot.repeat(2)
    order = torch.where(span_width > 0, shape_of_row % s, -1).to(torch.int32).repeat(2)
    table = torch.full((levels * n * size * size,), -1, dtype=torch.int32, device=device)
    table.scatter_reduce_(0, starts, order, reduce="amax")
    table = table.view(levels, n * size, size)
    for k in range(levels - 1, 0, -1):  # a level-k block is two level-(k-1) blocks
        half = 1 << (k - 1)
        torch.maximum(table[k - 1], table[k], out=table[k - 1])
        torch.maximum(table[k - 1, :, half:], table[k, :, : size - half], out=table[k - 1, :, half:])
    topmost = torch.where(table[0] < 0, s, table[0]).view(n, pixels).long()  # s: the background colour
    colour_index = topmost + torch.arange(n, device=device).unsqueeze(1) * (s + 1)
    picked = colours.reshape(n * (s + 1), channels).index_select(0, colour_index.flatten())  # (N*H*W, C)
    return to_uint8(picked.view(n, pixels, channels).permute(0, 2, 1).reshape(n, channels, size, size))
