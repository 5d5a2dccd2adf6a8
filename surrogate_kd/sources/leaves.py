"""Dead-leaves images (Baradad et al. 2021): flat-coloured shapes stacked until the canvas is covered.

Shapes are circles, squares, rotated squares, rotated rectangles and rotated equilateral
triangles with uniformly random colours and a size ("radius": circumradius of triangles,
half-side of squares and rectangles) drawn from a power law p(r) ~ r^-exponent between
min_radius and max_radius times the image size. A fixed, generous number of shapes is
painted back to front over a random background colour, in effect a bottom leaf as large as
the canvas; it shows through at about 0.5% of the pixels with the defaults.

Rasterising every shape over the whole canvas would cost shapes x pixels per image. Instead
each shape is cut into one horizontal span per pixel row it crosses, the span's ends solved
in closed form (a circle, or the intersection of a convex polygon's edge half-planes). Each
span writes its shape index into the two power-of-two blocks that exactly cover it, and a max
pushed down the block levels (as in a sparse table) leaves every pixel its topmost shape. The
work grows with the number of shape rows, not with shapes x pixels.
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
    """(M, 4, 2) lines (alpha, beta) bounding dx by alpha + beta * dy, for polygons.

    At vertical offset dy from its centre a convex polygon spans max(lines 0, 1) <= dx <=
    min(lines 2, 3); lines that do not bind are +-inf. Horizontal edges bound no dx: the
    shape's row range (`_vertical_reach`) takes care of them.
    """
    device = kind.device
    is_triangle = (kind == TRIANGLE).view(-1, 1)
    normals = torch.where(is_triangle.unsqueeze(-1), torch.tensor(_TRIANGLE_NORMALS, device=device),
                          torch.tensor(_BOX_NORMALS, device=device))  # fmt: skip
    triangle_offsets = torch.tensor([0.5, 0.5, 0.5, math.inf], device=device) * radius.unsqueeze(-1)
    box_offsets = torch.stack([radius, radius, radius * aspect, radius * aspect], -1)
    offsets = torch.where(is_triangle, triangle_offsets, box_offsets)  # (M, 4)
    # With u = dx cos + dy sin and v = dy cos - dx sin, n . (u, v) <= o reads a dx + b dy <= o.
    nu, nv = normals.unbind(-1)
    cos, sin = cos.unsqueeze(-1), sin.unsqueeze(-1)
    a, b = nu * cos - nv * sin, nu * sin + nv * cos
    a, order = torch.sort(a, dim=-1, stable=True)  # at most two planes have a < 0: they bound from the left
    b, offsets = b.gather(-1, order), offsets.gather(-1, order)
    slanted = a.abs() > 1e-6
    safe_a = torch.where(slanted, a, 1.0)
    alpha, beta = offsets / safe_a, -b / safe_a
    bounds_left = torch.tensor([True, True, False, False], device=device)
    binds = slanted & (bounds_left == (a < 0)) & torch.isfinite(alpha)
    never = torch.tensor([-math.inf, -math.inf, math.inf, math.inf], device=device)
    return torch.stack([torch.where(binds, alpha, never), torch.where(binds, beta, 0.0)], -1)


def _vertical_reach(kind: Tensor, radius: Tensor, aspect: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, ...]:
    """Lowest and highest dy of each shape (a point (u, v) of its frame is at dy = u sin + v cos)."""
    box = radius * (sin.abs() + aspect * cos.abs())
    vertex_y = torch.stack([u * sin + v * cos for u, v in _TRIANGLE_VERTICES], -1) * radius.unsqueeze(-1)
    up = torch.where(kind == TRIANGLE, vertex_y.amin(-1), torch.where(kind == CIRCLE, -radius, -box))
    down = torch.where(kind == TRIANGLE, vertex_y.amax(-1), torch.where(kind == CIRCLE, radius, box))
    return up, down


def _row_spans(centre_x, centre_y, radius, kind, lines, up, down, size: int) -> tuple[Tensor, ...]:
    """Cut shapes (M,) into one span per pixel row: (shape, row, first column, last column), each (R,).

    Pixel p's centre is at (p + 0.5) / size; a span may be empty (last < first).
    """
    device = kind.device
    top = torch.ceil((centre_y + up) * size - 0.5).clamp_(0, size).to(torch.int64)
    bottom = torch.floor((centre_y + down) * size - 0.5).clamp_(-1, size - 1).to(torch.int64)
    rows_per_shape = (bottom - top + 1).clamp_(min=0)
    shape = torch.repeat_interleave(torch.arange(kind.numel(), device=device), rows_per_shape)  # (R,)
    first_row = torch.cumsum(rows_per_shape, 0) - rows_per_shape
    row = (top - first_row).index_select(0, shape) + torch.arange(shape.numel(), device=device)
    # One gather of every float a row needs (index_select: far faster than x[idx] on CPU).
    is_circle = (kind == CIRCLE).to(torch.float32)
    per_shape = torch.cat([lines.flatten(1), torch.stack([centre_x, centre_y, radius, is_circle], -1)], -1)
    per_row = per_shape.index_select(0, shape)  # (R, 12)
    alpha, beta = per_row[:, 0:8:2], per_row[:, 1:8:2]  # (R, 4)
    row_x, row_y, row_radius, row_circle = per_row[:, 8:].unbind(-1)
    dy = (row.to(torch.float32) + 0.5) / size - row_y
    bounds = alpha + beta * dy.unsqueeze(-1)
    half_chord = torch.sqrt((row_radius * row_radius - dy * dy).clamp(min=0.0))  # circles: |dx| <= this
    left = torch.where(row_circle > 0, -half_chord, bounds[:, :2].amax(-1))
    right = torch.where(row_circle > 0, half_chord, bounds[:, 2:].amin(-1))
    first = torch.ceil(row_x * size - 0.5 + left * size).clamp(0, size).to(torch.int64)
    last = torch.floor(row_x * size - 0.5 + right * size).clamp(-1, size - 1).to(torch.int64)
    return shape, row, first, last


def _paint(line: Tensor, first: Tensor, last: Tensor, order: Tensor, lines: int, size: int) -> Tensor:
    """Per pixel, the largest `order` among the spans covering it, -1 where none does.

    line, first, last, order: (R,) spans on rows `line` of a (lines, size) canvas -> (lines, size).
    Rather than expanding spans into pixels, each span writes its order into the two
    power-of-two blocks that exactly cover it (as in a sparse table); a max is then pushed
    down the block levels, so the cost is per span and per pixel, not per covered pixel.
    """
    width = (last - first + 1).clamp(min=0)
    levels = max(1, size.bit_length())  # block lengths 1, 2, ..., 2^(levels - 1) <= size
    log_width = sum((width >= (1 << k)).to(torch.int64) for k in range(1, levels))  # floor(log2(width))
    block = torch.bitwise_left_shift(torch.ones_like(log_width), log_width)
    row_start = (log_width * lines + line) * size  # the span's row in the table of its level
    # Empty spans write too, harmlessly: order -1 at a clamped column.
    starts = torch.cat([row_start + first.clamp(max=size - 1), row_start + (last - block + 1).clamp(min=0)])
    values = torch.where(width > 0, order, -1).to(torch.int32).repeat(2)
    table = torch.full((levels * lines * size,), -1, dtype=torch.int32, device=line.device)
    table.scatter_reduce_(0, starts, values, reduce="amax")
    table = table.view(levels, lines, size)
    for k in range(levels - 1, 0, -1):  # a level-k block is two level-(k-1) blocks
        half = 1 << (k - 1)
        torch.maximum(table[k - 1], table[k], out=table[k - 1])
        torch.maximum(table[k - 1, :, half:], table[k, :, : size - half], out=table[k - 1, :, half:])
    return table[0]


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
    n, s = indices.numel(), shapes
    draws = Draws(seed, indices)
    params = draws.uniform(s, 6).flatten(0, 1)  # (N*S, 6): shape k of image i is row i*S + k
    centre_x, centre_y, radius_u, kind_u, angle_u, aspect_u = params.unbind(-1)
    colours = draws.uniform(s + 1, channels).flatten(0, 1)  # (N*(S+1), C); colour S is the background
    kind = (kind_u * _KINDS).to(torch.int64).clamp_(max=_KINDS - 1)
    radius = power_law_radius(radius_u, min_radius, max_radius, exponent)
    angle = torch.where((kind == SQUARE) | (kind == CIRCLE), 0.0, angle_u * (2 * math.pi))
    aspect = torch.where(kind == RECTANGLE, 0.25 + 0.75 * aspect_u, 1.0)
    cos, sin = torch.cos(angle), torch.sin(angle)
    lines = _edge_lines(kind, radius, aspect, cos, sin)  # (N*S, 4, 2)
    up, down = _vertical_reach(kind, radius, aspect, cos, sin)

    shape, row, first, last = _row_spans(centre_x, centre_y, radius, kind, lines, up, down, size)
    image, order = shape // s, shape % s  # back to front: a larger order is painted later, on top
    topmost = _paint(image * size + row, first, last, order, n * size, size)  # (N*H, W)
    topmost = torch.where(topmost < 0, s, topmost).view(n, size * size).long()
    colour_index = topmost + torch.arange(n, device=device).unsqueeze(1) * (s + 1)
    picked = colours.index_select(0, colour_index.flatten())  # (N*H*W, C)
    return to_uint8(picked.view(n, size, size, channels).permute(0, 3, 1, 2))
