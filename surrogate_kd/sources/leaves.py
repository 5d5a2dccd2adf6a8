"""Dead-leaves images (Baradad et al. 2021): flat-coloured shapes stacked until the canvas is covered.

Shapes are circles, squares, rotated squares, rotated rectangles and rotated equilateral
triangles with uniformly random colours and a size ("radius": circumradius of triangles,
half-side of squares and rectangles) drawn from a power law p(r) ~ r^-exponent between
min_radius and max_radius times the image size.

Coverage uses the exact ("perfect simulation") view of the dead-leaves model: leaves fall in
rounds of `shapes` per image. Round 0 is the top layer, its shapes painted back to front;
each later round lies beneath all earlier ones and shows only where they left a pixel
uncovered. Rounds continue, for the images that still have an uncovered pixel only, until
every pixel is covered or `max_rounds` rounds have fallen; only then does a random background
colour show. A covered image is thus an exact sample of the dead-leaves model, whatever the
number of shapes per round: `shapes` sets the speed, not the look (with the defaults, 200 shapes
per round and up to 32 rounds, no background is left; round 0 alone leaves about 5% of the
pixels open).

Rasterising every shape over the whole canvas would cost shapes x pixels per image. Instead
each shape is cut into one horizontal span per pixel row it crosses, the span's ends solved
in closed form (a circle, or the intersection of a convex polygon's edge half-planes). In
round 0 each span writes its shape index into the two power-of-two blocks that exactly cover
it, and a max pushed down the block levels (as in a sparse table) leaves every pixel its
topmost shape. The work grows with the number of shape rows, not with shapes x pixels. Later
rounds skip the shapes whose bounding box holds no uncovered pixel and the rows without one,
and match each remaining span with the uncovered pixels it covers, so they cost in proportion
to the gaps left, not to the image.

Image i is a pure function of (seed, i, parameters): round 0 draws from the hash of (seed, i),
round r from the hash of (seed, i, r) (and per kept shape k, of (seed, i, -(r * 2^32 + k) - 1)),
and whether an image needs another round depends on its own pixels only.
"""

import math

import torch
from torch import Tensor

from ..errors import UserError
from ..registry import SOURCES
from .pixels import channels_first, to_uint8
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
    is_triangle = kind == TRIANGLE
    # The normals and offsets of the four planes, (M, 4) each, from Python numbers as scalars (no
    # tensor from Python data: a host->device copy per call on a GPU).
    nu = torch.stack([torch.where(is_triangle, t[0], b[0]) for t, b in zip(_TRIANGLE_NORMALS, _BOX_NORMALS)], -1)
    nv = torch.stack([torch.where(is_triangle, t[1], b[1]) for t, b in zip(_TRIANGLE_NORMALS, _BOX_NORMALS)], -1)
    half = radius * 0.5
    triangle_offsets = torch.stack([half, half, half, radius * math.inf], -1)
    box_offsets = torch.stack([radius, radius, radius * aspect, radius * aspect], -1)
    offsets = torch.where(is_triangle.unsqueeze(-1), triangle_offsets, box_offsets)  # (M, 4)
    # With u = dx cos + dy sin and v = dy cos - dx sin, n . (u, v) <= o reads a dx + b dy <= o.
    cos, sin = cos.unsqueeze(-1), sin.unsqueeze(-1)
    a, b = nu * cos - nv * sin, nu * sin + nv * cos
    a, order = torch.sort(a, dim=-1, stable=True)  # at most two planes have a < 0: they bound from the left
    b, offsets = b.gather(-1, order), offsets.gather(-1, order)
    slanted = a.abs() > 1e-6
    safe_a = torch.where(slanted, a, 1.0)
    alpha, beta = offsets / safe_a, -b / safe_a
    bounds_left = torch.arange(4, device=kind.device) < 2  # planes 0, 1 after the sort
    binds = slanted & (bounds_left == (a < 0)) & torch.isfinite(alpha)
    never = torch.where(bounds_left, -math.inf, math.inf)
    return torch.stack([torch.where(binds, alpha, never), torch.where(binds, beta, 0.0)], -1)


def _vertical_reach(kind: Tensor, radius: Tensor, aspect: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, ...]:
    """Lowest and highest dy of each shape (a point (u, v) of its frame is at dy = u sin + v cos)."""
    box = radius * (sin.abs() + aspect * cos.abs())
    vertex_y = torch.stack([u * sin + v * cos for u, v in _TRIANGLE_VERTICES], -1) * radius.unsqueeze(-1)
    up = torch.where(kind == TRIANGLE, vertex_y.amin(-1), torch.where(kind == CIRCLE, -radius, -box))
    down = torch.where(kind == TRIANGLE, vertex_y.amax(-1), torch.where(kind == CIRCLE, radius, box))
    return up, down


def _shape_rows(centre_y: Tensor, up: Tensor, down: Tensor, size: int) -> tuple[Tensor, ...]:
    """The pixel rows each shape (M,) crosses: top and bottom row per shape, each (M,).

    Pixel p's centre is at (p + 0.5) / size; top > bottom for a shape that crosses no row.
    """
    top = torch.ceil((centre_y + up) * size - 0.5).clamp_(0, size).to(torch.int64)
    bottom = torch.floor((centre_y + down) * size - 0.5).clamp_(-1, size - 1).to(torch.int64)
    return top, bottom


def _ranges(low: Tensor, high: Tensor) -> tuple[Tensor, Tensor]:
    """One pair (j, value) per integer low[j] <= value <= high[j], each (R,): e.g. each shape's rows."""
    device = low.device
    count = (high - low + 1).clamp_(min=0)
    owner = torch.repeat_interleave(torch.arange(low.numel(), device=device), count)  # (R,)
    before = torch.cumsum(count, 0) - count
    value = (low - before).index_select(0, owner) + torch.arange(owner.numel(), device=device)
    return owner, value


def _spans(shape, row, centre_x, centre_y, radius, kind, lines, size: int) -> tuple[Tensor, Tensor]:
    """First and last column of shape `shape` on pixel row `row`, each (R,); empty if last < first."""
    # One gather of every float a row needs (index_select: far faster than x[idx] on CPU).
    is_circle = (kind == CIRCLE).to(torch.float32)
    per_shape = torch.cat([lines.flatten(1), torch.stack([centre_x, centre_y, radius, is_circle], -1)], -1)
    per_row = per_shape.index_select(0, shape)  # (R, 12)
    row_x, row_y, row_radius, row_circle = per_row[:, 8:].unbind(-1)
    dy = (row.to(torch.float32) + 0.5) / size - row_y
    bounds = per_row[:, 0:8:2] + per_row[:, 1:8:2] * dy.unsqueeze(-1)  # (R, 4) lines alpha + beta * dy
    return _span_ends(dy, row_x, row_radius, row_circle > 0, bounds[:, :2].amax(-1), bounds[:, 2:].amin(-1), size)


def _span_ends(dy: Tensor, x: Tensor, radius: Tensor, circle: Tensor, left: Tensor, right: Tensor,
               size: int) -> tuple[Tensor, Tensor]:  # fmt: skip
    """First and last column (int64) of spans at vertical offset dy from their shape's centre.

    x, radius, circle (bool): the shape's, broadcastable with dy; left, right: a polygon's bounds
    on dx there (the binding lines of `_edge_lines`), shaped like dy. Empty if last < first.
    """
    half_chord = torch.sqrt((radius * radius - dy * dy).clamp(min=0.0))  # circles: |dx| <= this
    left = torch.where(circle, -half_chord, left)
    right = torch.where(circle, half_chord, right)
    first = torch.ceil(x * size - 0.5 + left * size).clamp(0, size).to(torch.int64)
    last = torch.floor(x * size - 0.5 + right * size).clamp(-1, size - 1).to(torch.int64)
    return first, last


def _topmost_everywhere(
    centre_x: Tensor, centre_y: Tensor, radius: Tensor, orient: tuple[Tensor, ...], images: int, count: int,
    size: int,
) -> Tensor:
    """(images*size, size) int32: per pixel, the largest j among shapes j < count of its image covering it, -1 if none.

    Shapes (M,) = (images*count,), shape j of image a at a*count + j; orient: `_orient`'s kind,
    aspect, cos, sin. Every shape is cut on every pixel row, rows it does not cross giving empty
    spans: count*size spans per image whatever the shapes' sizes (the 'where' strategy), painted
    as in `_paint`.
    """
    kind = orient[0]
    first, last = _every_row_spans(centre_x, centre_y, radius, orient, size)  # (M, H) each
    shape = torch.arange(images * count, device=kind.device).view(-1, 1)
    line = (shape // count * size + torch.arange(size, device=kind.device)).flatten()  # among the images' rows
    order = (shape % count).expand(-1, size).flatten()
    return _paint(line, first.flatten(), last.flatten(), order, images * size, size)


def _every_row_spans(centre_x: Tensor, centre_y: Tensor, radius: Tensor, orient: tuple[Tensor, ...],
                     size: int) -> tuple[Tensor, Tensor]:  # fmt: skip
    """First and last column of every shape (M,) on every pixel row: (M, H) each, empty where it does not cross.

    A function of its own, so that its (M, H) float temporaries are freed before the painting.
    """
    kind, aspect, cos, sin = orient
    lines = _edge_lines(kind, radius, aspect, cos, sin)  # (M, 4, 2)
    top, bottom = _shape_rows(centre_y, *_vertical_reach(kind, radius, aspect, cos, sin), size)
    row = torch.arange(size, device=kind.device).view(1, size)
    dy = (row.to(torch.float32) + 0.5) / size - centre_y.view(-1, 1)  # (M, H)
    # The lines one at a time, (M, H) each: the same floats as `_spans`' (R, 4), without a 4x temporary.
    alpha, beta = (lines[..., j].unsqueeze(-1).unbind(1) for j in (0, 1))  # 4 of (M, 1) each
    left = torch.maximum(alpha[0] + beta[0] * dy, alpha[1] + beta[1] * dy)
    right = torch.minimum(alpha[2] + beta[2] * dy, alpha[3] + beta[3] * dy)
    first, last = _span_ends(dy, centre_x.view(-1, 1), radius.view(-1, 1), (kind == CIRCLE).view(-1, 1),
                             left, right, size)  # fmt: skip
    crosses = (row >= top.view(-1, 1)) & (row <= bottom.view(-1, 1))  # (M, H)
    return first, torch.where(crosses, last, -1)  # a row the shape does not cross: an empty span


def _paint(line: Tensor, first: Tensor, last: Tensor, order: Tensor, lines: int, size: int) -> Tensor:
    """Per pixel, the largest `order` among the spans covering it, -1 where none does.

    line, first, last, order: (R,) spans on rows `line` of a (lines, size) canvas -> (lines, size).
    Rather than expanding spans into pixels, each span writes its order into the two
    power-of-two blocks that exactly cover it (as in a sparse table); a max is then pushed
    down the block levels, so the cost is per span and per pixel, not per covered pixel.
    """
    width = (last - first + 1).clamp(min=0)
    levels = max(1, size.bit_length())  # block lengths 1, 2, ..., 2^(levels - 1) <= size
    # floor(log2(width)) and its block length, looked up in tables of the size + 1 possible widths
    possible = torch.arange(size + 1, device=line.device)
    log_of = sum((possible >= (1 << k)).to(torch.int64) for k in range(1, levels))  # 0 for widths 0 and 1
    log_width = log_of.index_select(0, width)
    block = torch.bitwise_left_shift(torch.ones_like(log_of), log_of).index_select(0, width)
    row_start = (log_width * lines + line) * size  # the span's row in the table of its level
    # Empty spans write too, harmlessly: order -1 at a clamped column.
    starts = torch.cat([row_start + first.clamp(max=size - 1), row_start + (last - block + 1).clamp(min=0)])
    values = torch.where(width > 0, order, -1).to(torch.int32).repeat(2)
    table = torch.full((levels * lines * size,), -1, dtype=torch.int32, device=line.device)
    table.scatter_reduce_(0, starts, values, reduce="amax")
    table = table.view(levels, lines, size)
    for k in range(levels - 1, 0, -1):  # a level-k block is two level-(k-1) blocks
        half = 1 << (k - 1)
        table[k - 1].clamp_(min=table[k])  # in-place max (torch.compile refuses out= on a strided view)
        table[k - 1, :, half:].clamp_(min=table[k, :, : size - half])
    return table[0]


def _orient(kind_u: Tensor, angle_u: Tensor, aspect_u: Tensor) -> tuple[Tensor, ...]:
    """Kind, aspect, cos and sin of the angle of shapes, from uniforms, each (M,)."""
    kind = (kind_u * _KINDS).to(torch.int64).clamp_(max=_KINDS - 1)
    angle = torch.where((kind == SQUARE) | (kind == CIRCLE), 0.0, angle_u * (2 * math.pi))
    aspect = torch.where(kind == RECTANGLE, 0.25 + 0.75 * aspect_u, 1.0)
    return kind, aspect, torch.cos(angle), torch.sin(angle)


def _touching(open_at: Tensor, images: int, count: int, size: int, box: tuple[Tensor, ...]) -> Tensor:
    """Indices of the shapes whose box of pixels holds an open pixel of their image; may keep a few more.

    open_at: (P,) open pixels as a*H*W + y*W + x for image a < `images`; `count` shapes per image,
    shape k of image a at a*count + k; box: rows top..bottom and columns left..right of each shape.
    The test runs on blocks of about size/32 pixels, so its tables stay small at any image size.
    """
    block = -(-size // 32)
    grid = -(-size // block)  # blocks per side
    y, x = (open_at // size) % size // block, open_at % size // block
    cells = torch.zeros(images * grid * grid, dtype=torch.int32, device=open_at.device)
    cells.index_fill_(0, (open_at // (size * size) * grid + y) * grid + x, 1)
    # Summed-area table: blocks with an open pixel in rows < y and columns < x, (A, G+1, G+1).
    table = torch.zeros((images, grid + 1, grid + 1), dtype=torch.int32, device=open_at.device)
    table[:, 1:, 1:] = cells.view(images, grid, grid).cumsum(1).cumsum(2)
    table = table.flatten()
    base = torch.arange(images, device=table.device).repeat_interleave(count) * (grid + 1) ** 2
    top, bottom, left, right = (edge // block for edge in box)
    rows = torch.stack([bottom + 1, top, bottom + 1, top])
    columns = torch.stack([right + 1, right + 1, left, left])
    corners = table.index_select(0, (base + rows * (grid + 1) + columns).flatten()).view(4, -1)
    inside = corners[0] - corners[1] - corners[2] + corners[3]
    return torch.nonzero((inside > 0) & (bottom >= top) & (right >= left)).squeeze(1)


def _layers(
    seed: int,
    indices: Tensor,
    size: int,
    channels: int,
    shapes: int,
    radii: tuple[float, float, float],
    max_rounds: int,
    strategy: str = "gather",
) -> tuple[Tensor, Tensor]:
    """uint8 (N, size, size, channels) colours, and the (N, size, size) bool mask of background pixels.

    Round 0 is the top layer; round r >= 1 lies beneath rounds < r and is drawn only for the
    images that still have uncovered pixels (see `_paint_beneath`); with strategy 'where', every
    round for every image (`_every_round`).
    """
    if strategy == "where":
        return _every_round(seed, indices, size, channels, shapes, radii, max_rounds)
    n, s, device = indices.numel(), shapes, indices.device
    draws = Draws(seed, indices)
    params = draws.uniform(s, 6).flatten(0, 1)  # (N*S, 6): shape k of image i is row i*S + k
    centre_x, centre_y, radius_u, kind_u, angle_u, aspect_u = params.unbind(-1)
    colours = draws.uniform(s + 1, channels).flatten(0, 1)  # (N*(S+1), C); colour S is the background
    colours = to_uint8(colours)  # before the gather: a byte per pixel and channel to move, not a float
    radius = power_law_radius(radius_u, *radii)
    kind, aspect, cos, sin = _orient(kind_u, angle_u, aspect_u)
    lines = _edge_lines(kind, radius, aspect, cos, sin)  # (N*S, 4, 2)
    up, down = _vertical_reach(kind, radius, aspect, cos, sin)
    shape, row = _ranges(*_shape_rows(centre_y, up, down, size))
    first, last = _spans(shape, row, centre_x, centre_y, radius, kind, lines, size)
    image, order = shape // s, shape % s  # back to front: a larger order is painted later, on top
    topmost = _paint(image * size + row, first, last, order, n * size, size)  # (N*H, W)
    uncovered = topmost < 0
    topmost = torch.where(uncovered, s, topmost).view(n, size * size).long()
    colour_index = topmost + torch.arange(n, device=device).unsqueeze(1) * (s + 1)
    picked = colours.index_select(0, colour_index.flatten())  # (N*H*W, C)
    open_at = torch.nonzero(uncovered.flatten()).squeeze(1)  # uncovered pixels, ascending
    next_round = 1
    while next_round < max_rounds and open_at.numel() > 0:
        # Rounds 1, 2-3, 4-7...: a pass of several rounds gives the same pixels as one round at
        # a time (a deeper round only shows where the others leave a gap) in fewer, larger steps.
        rounds = min(next_round, max_rounds - next_round)
        open_at = _paint_beneath(seed, indices, open_at, next_round, rounds, picked, size, s, radii)
        next_round += rounds
    uncovered = torch.zeros(n * size * size, dtype=torch.bool, device=device).index_fill_(0, open_at, True)
    return picked.view(n, size, size, channels), uncovered.view(n, size, size)


def _paint_beneath(
    seed: int,
    indices: Tensor,
    open_at: Tensor,
    first_round: int,
    rounds: int,
    picked: Tensor,
    size: int,
    s: int,
    radii: tuple[float, float, float],
) -> Tensor:
    """Rounds first_round.. first_round + rounds - 1 (>= 1), beneath the earlier ones, where gaps remain.

    open_at: (P,) uncovered pixels as i*H*W + y*W + x, ascending; picked: (N*H*W, C) uint8,
    updated in place. Returns the pixels still uncovered. In each round, each image with a gap
    draws the centres and sizes of its `s` shapes from the hash of (seed, i, round); only the
    shapes whose bounding box holds an uncovered pixel draw the rest (kind, angle, aspect,
    colour), from the hash of (seed, i, salt -(round * 2^32 + k) - 1), and are cut into spans,
    on the rows with an uncovered pixel only; each span is then matched with the uncovered
    pixels it covers. The work grows with the shapes and the gaps, not with the image size.
    """
    area = size * size
    active, local = torch.unique_consecutive(open_at // area, return_inverse=True)  # (A,), (P,)
    images = active.numel()
    at = local * area + open_at % area  # in A*H*W, still ascending
    # Shape k of layer l of image a is row (a * rounds + l) * s + k; layer 0 is the deepest round.
    layer_round = torch.arange(first_round + rounds - 1, first_round - 1, -1, device=open_at.device)
    layer_image = indices.index_select(0, active).repeat_interleave(rounds)  # (A*rounds,)
    draws = Draws(seed, layer_image, salt=layer_round.repeat(images))
    centre_x, centre_y, radius_u = draws.uniform(s, 3).flatten(0, 1).unbind(-1)  # (A*rounds*S,)
    radius = power_law_radius(radius_u, *radii)
    reach = radius * math.sqrt(2)  # every kind lies within this of its centre (a rectangle's corner)
    box = (  # rows top..bottom, columns left..right, a pixel wider each side against rounding
        (torch.ceil((centre_y - reach) * size - 0.5) - 1).clamp(0, size).to(torch.int64),
        (torch.floor((centre_y + reach) * size - 0.5) + 1).clamp(-1, size - 1).to(torch.int64),
        (torch.ceil((centre_x - reach) * size - 0.5) - 1).clamp(0, size).to(torch.int64),
        (torch.floor((centre_x + reach) * size - 0.5) + 1).clamp(-1, size - 1).to(torch.int64),
    )
    kept = _touching(at, images, rounds * s, size, box)  # (K,) ascending: by image, layer, order
    if kept.numel() == 0:
        return open_at
    image, order = kept // (rounds * s), kept % s
    salt = -(layer_round.index_select(0, kept // s % rounds) * (1 << 32) + order) - 1
    shape_draws = Draws(seed, layer_image.index_select(0, kept // s), salt=salt)
    rest = shape_draws.uniform(3 + picked.shape[-1])  # (K, 3 + C): kind, angle, aspect, colour
    kind, aspect, cos, sin = _orient(*rest[:, :3].unbind(-1))
    colours = to_uint8(rest[:, 3:])
    centre_x, centre_y, radius = (x.index_select(0, kept) for x in (centre_x, centre_y, radius))
    up, down = _vertical_reach(kind, radius, aspect, cos, sin)
    shape, row = _ranges(*_shape_rows(centre_y, up, down, size))
    line = image.index_select(0, shape) * size + row  # in A*H
    open_rows = torch.zeros(images * size, dtype=torch.bool, device=at.device).index_fill_(0, at // size, True)
    keep = torch.nonzero(open_rows.index_select(0, line)).squeeze(1)  # rows with an open pixel only
    shape, row, line = shape.index_select(0, keep), row.index_select(0, keep), line.index_select(0, keep)
    lines = _edge_lines(kind, radius, aspect, cos, sin)
    first, last = _spans(shape, row, centre_x, centre_y, radius, kind, lines, size)
    # Pair each span with the open pixels it covers: in ascending order, those are a run of `at`.
    run = torch.searchsorted(at, torch.cat([line * size + first, line * size + last + 1])).view(2, -1)
    span, pixel = _ranges(run[0], run[1] - 1)
    # Shape j of `kept` lies above shapes < j of its image (a shallower round, or later in its
    # round): the largest j covering a pixel shows.
    topmost = torch.full((at.numel(),), -1, dtype=torch.int64, device=at.device)
    topmost.scatter_reduce_(0, pixel, shape.index_select(0, span), reduce="amax")
    filled = topmost >= 0
    picked.index_copy_(0, open_at[filled], colours.index_select(0, topmost[filled]))
    return open_at[~filled]


# Deep rounds per pass of the 'where' strategy: 1, 2-3, then two at a time (16 passes for 32 rounds).
# Four at a time: 4,362 ops instead of 7,466 for 4,096 images at 32x32, but temporaries of about
# 13 GB instead of 5 (rounds x shapes x size spans per image, ~130 bytes each).
_ROUNDS_PER_PASS = 2


def _every_round(
    seed: int,
    indices: Tensor,
    size: int,
    channels: int,
    shapes: int,
    radii: tuple[float, float, float],
    max_rounds: int,
) -> tuple[Tensor, Tensor]:
    """`_layers` with a fixed set of ops: all `max_rounds` rounds drawn and painted for every image.

    The same pixels as `_layers`: a deeper round shows only where the rounds above it left a gap,
    chosen by torch.where instead of by gathering the gaps. The work is max_rounds times round
    0's (shapes x size spans per image and round), whatever the gaps, with no host sync.
    """
    n, s, device = indices.numel(), shapes, indices.device
    draws = Draws(seed, indices)  # round 0: the same draws as `_layers`
    centre_x, centre_y, radius_u, kind_u, angle_u, aspect_u = draws.uniform(s, 6).flatten(0, 1).unbind(-1)
    colours = to_uint8(draws.uniform(s + 1, channels).flatten(0, 1))  # (N*(S+1), C); colour S is the background
    radius = power_law_radius(radius_u, *radii)
    topmost = _topmost_everywhere(centre_x, centre_y, radius, _orient(kind_u, angle_u, aspect_u), n, s, size)
    topmost = topmost.view(n, size * size)
    uncovered = topmost < 0
    colour_index = torch.where(uncovered, s, topmost).long() + torch.arange(n, device=device).unsqueeze(1) * (s + 1)
    picked = colours.index_select(0, colour_index.flatten())  # (N*H*W, C)
    uncovered = uncovered.flatten()
    first_round = 1
    while first_round < max_rounds:
        rounds = min(first_round, _ROUNDS_PER_PASS, max_rounds - first_round)
        # Shape k of layer l of image a is (a * rounds + l) * S + k; layer 0 is the deepest round, as in
        # `_paint_beneath`, so the largest index covering a pixel is the one on top.
        layer_round = torch.arange(first_round + rounds - 1, first_round - 1, -1, device=device).repeat(n)
        layer_image = _each(indices, rounds)  # (N*rounds,)
        centre_x, centre_y, radius_u = Draws(seed, layer_image, salt=layer_round).uniform(s, 3).flatten(0, 1).unbind(-1)
        order = torch.arange(s, device=device).repeat(n * rounds)  # (N*rounds*S,)
        salt = -(_each(layer_round, s) * (1 << 32) + order) - 1
        rest = Draws(seed, _each(layer_image, s), salt=salt).uniform(3 + channels)  # kind, angle, aspect, colour
        radius = power_law_radius(radius_u, *radii)
        topmost = _topmost_everywhere(centre_x, centre_y, radius, _orient(*rest[:, :3].unbind(-1)), n, rounds * s, size)
        fills = uncovered & (topmost >= 0).flatten()  # (N*H*W,) gaps this pass covers
        index = topmost.view(n, -1).long().clamp(min=0) + torch.arange(n, device=device).unsqueeze(1) * (rounds * s)
        picked = torch.where(fills.unsqueeze(1), to_uint8(rest[:, 3:]).index_select(0, index.flatten()), picked)
        uncovered = uncovered & ~fills
        first_round += rounds
    return picked.view(n, size, size, channels), uncovered.view(n, size, size)


def _each(x: Tensor, times: int) -> Tensor:
    """(M,) -> (M*times,): each element repeated `times` times in a row (repeat_interleave by expand)."""
    return x.view(-1, 1).expand(-1, times).reshape(-1)


@SOURCES.register("leaves")
def leaves(
    seed: int,
    indices: Tensor,
    size: int,
    channels: int,
    device: torch.device,
    strategy: str,
    shapes: int = 200,
    min_radius: float = 0.03,
    max_radius: float = 1.0,
    exponent: float = 3.0,
    max_rounds: int = 32,
) -> Tensor:
    """uint8 (N, channels, size, size) dead-leaves images; `shapes` shapes per round."""
    if not (isinstance(shapes, int) and shapes >= 1):
        raise UserError(f"leaves needs shapes >= 1, got {shapes!r}")
    if not 0 < min_radius <= max_radius:
        raise UserError(f"leaves needs 0 < min_radius <= max_radius, got {min_radius}, {max_radius}")
    if not (isinstance(max_rounds, int) and max_rounds >= 1):
        raise UserError(f"leaves needs max_rounds >= 1, got {max_rounds!r}")
    colours, _ = _layers(seed, indices, size, channels, shapes, (min_radius, max_radius, exponent), max_rounds,
                         strategy)  # fmt: skip
    return channels_first(colours)
