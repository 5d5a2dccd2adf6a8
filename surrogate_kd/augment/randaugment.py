"""RandAugment batched: torchvision's op list and magnitude mapping, one op per image per draw."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import UserError
from ..runtime import resolve_strategy
from ._per_sample import apply_grouped, constant, luminance, pixel_centres, randint, uniform

# torchvision's RandAugment ops, in its order (`RandAugment._augmentation_space`).
RANDAUGMENT_OPS = (
    "Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness",
    "Color", "Contrast", "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize",
)  # fmt: skip
_OP_ID = {name: i for i, name in enumerate(RANDAUGMENT_OPS)}
MAX_MAGNITUDE = 30  # torchvision's num_magnitude_bins=31: magnitudes 0..30; larger ones are clipped


def op_magnitudes(magnitude: float, height: int, width: int) -> tuple[Tensor, Tensor]:
    """torchvision RandAugment's `_augmentation_space` at one magnitude: per op (value, signed), each (14,), on CPU.

    Values are in the units torchvision's `_apply_op` takes (shear factor, pixels, degrees,
    factor - 1, bits, threshold on 0-255). `magnitude` is clipped to [0, 30], so m=30 puts every op
    at its maximum; fractional magnitudes interpolate linearly between torchvision's bins.
    """
    values, signed = _magnitude_table(magnitude, height, width)
    return torch.tensor(values), torch.tensor(signed)


def _magnitude_table(magnitude: float, height: int, width: int) -> tuple[tuple[float, ...], tuple[bool, ...]]:
    """`op_magnitudes` as Python numbers, in RANDAUGMENT_OPS order."""
    t = min(max(float(magnitude), 0.0), MAX_MAGNITUDE) / MAX_MAGNITUDE
    table = {
        "ShearX": (0.3 * t, True),
        "ShearY": (0.3 * t, True),
        "TranslateX": (150.0 / 331.0 * width * t, True),
        "TranslateY": (150.0 / 331.0 * height * t, True),
        "Rotate": (30.0 * t, True),
        "Brightness": (0.9 * t, True),
        "Color": (0.9 * t, True),
        "Contrast": (0.9 * t, True),
        "Sharpness": (0.9 * t, True),
        "Posterize": (8.0 - round(4 * t), False),  # torchvision: 8 - round(m / 7.5), round half to even
        "Solarize": (255.0 * (1 - t), False),
    }
    values = tuple(float(table.get(name, (0.0, False))[0]) for name in RANDAUGMENT_OPS)
    signed = tuple(table.get(name, (0.0, False))[1] for name in RANDAUGMENT_OPS)
    return values, signed


def draw_ops(
    batch: int, magnitude: float, height: int, width: int, generator: torch.Generator, device: torch.device
) -> tuple[Tensor, Tensor]:
    """One RandAugment draw per image, as torchvision does it: a uniform op and, for signed ops, a random sign."""
    device = torch.device(device)
    table, is_signed = _magnitude_table(magnitude, height, width)
    values, signed = constant(table, device), constant(is_signed, device, torch.bool)  # (14,) each, cached
    op_index = randint(generator, len(RANDAUGMENT_OPS), (batch,), device)  # (B,)
    negate = (uniform(generator, (batch,), device) < 0.5) & signed[op_index]
    return op_index, torch.where(negate, -values[op_index], values[op_index])


def apply_ops(x: Tensor, op_index: Tensor, magnitude: Tensor, strategy: str | None = None) -> Tensor:
    """Apply op RANDAUGMENT_OPS[op_index[b]] with magnitude[b] (torchvision's units) to each image b.

    x: (B, C, H, W) float in [0, 1]. The five warps share one `grid_sample` with a matrix per
    image; every other op runs once: on the images that chose it (strategy 'gather', the CPU
    default) or on the whole batch, `torch.where` picking ('where', the accelerators' default).
    """
    is_warp = (op_index >= _OP_ID[_WARPS[0]]) & (op_index <= _OP_ID[_WARPS[-1]])  # the warps are consecutive ids
    group = torch.where(is_warp, _OP_ID[_WARPS[0]], op_index)  # (B,) all warps in one group
    fns = {_OP_ID[_WARPS[0]]: _warp} | {_OP_ID[name]: _ignore_op_index(op) for name, op in _PIXEL_OPS.items()}
    sort = resolve_strategy(strategy, x.device, "augmentation strategy") == "gather"
    return apply_grouped(group, fns, x, op_index, magnitude, sort=sort)


def _ignore_op_index(op: Callable[[Tensor, Tensor], Tensor]) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """(x, magnitude) -> x as the group signature (x, op_index, magnitude) -> x; only the warps need op_index."""
    return lambda x, op_index, magnitude: op(x, magnitude)


def apply_op(x: Tensor, name: str, magnitude: Tensor | float) -> Tensor:
    """Apply one named op to every image of x (B, C, H, W) float, with a per-image or shared magnitude."""
    if name not in _OP_ID:
        raise UserError(f"unknown RandAugment op '{name}'; valid: {', '.join(RANDAUGMENT_OPS)}")
    magnitude = torch.as_tensor(magnitude, dtype=torch.float32, device=x.device).expand(x.shape[0])
    return apply_ops(x, torch.full_like(magnitude, _OP_ID[name], dtype=torch.long), magnitude)


def _inverse_affine(
    angle: Tensor,
    shear_x: Tensor,
    shear_y: Tensor,
    translate_x: Tensor,
    translate_y: Tensor,
    about_corner: Tensor,
    size: tuple[int, int],
) -> Tensor:
    """Output -> input pixel map of torchvision's F.affine (scale 1), per image: (B, 2, 3).

    Same algebra as torchvision's `_get_inverse_affine_matrix`; angles in degrees, shears as
    factors (tan of the shear angle), coordinates relative to the image centre, and the centre of
    the transform at the top-left corner where `about_corner`.
    """
    height, width = size
    rot = torch.deg2rad(angle.double())
    shear_y_angle = torch.atan(shear_y.double())
    tan_shear_x = shear_x.double()
    # Rotation-shear matrix [[a, b], [c, d]] (det 1) ...
    a = torch.cos(rot - shear_y_angle) / torch.cos(shear_y_angle)
    b = -(a * tan_shear_x + torch.sin(rot))
    c = torch.sin(rot - shear_y_angle) / torch.cos(shear_y_angle)
    d = torch.cos(rot) - c * tan_shear_x
    # ... inverted, then composed with the inverse translation, about the centre (cx, cy).
    cx = torch.where(about_corner, -0.5 * width, 0.0).double()
    cy = torch.where(about_corner, -0.5 * height, 0.0).double()
    ox, oy = cx + translate_x.double(), cy + translate_y.double()
    rows = [d, -b, cx - d * ox + b * oy, -c, a, cy + c * ox - a * oy]
    return torch.stack(rows, dim=-1).view(-1, 2, 3).float()


def _affine_grid(matrix: Tensor, size: tuple[int, int]) -> Tensor:
    """Sampling grid (B, H, W, 2) for `grid_sample` from per-image pixel maps (B, 2, 3), as torchvision's `_affine_grid`.

    Written as broadcast multiply-adds: with only three columns, F.affine_grid's batched matmul
    is ~10x slower on CPU.
    """
    height, width = size
    half_size = constant((0.5 * width, 0.5 * height), matrix.device, matrix.dtype)
    m = matrix / half_size[None, :, None]  # to normalised coordinates
    m = m[:, :, :, None, None]  # (B, 2, 3, 1, 1)
    xs = pixel_centres(width, matrix.device)  # (W,)
    ys = pixel_centres(height, matrix.device)[:, None]  # (H, 1)
    grid = m[:, :, 0] * xs + m[:, :, 1] * ys + m[:, :, 2]  # (B, 2, H, W)
    return grid.permute(0, 2, 3, 1)


def _grayscale(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, 1, H, W) luma; a grey image is its own."""
    return x if x.shape[1] == 1 else luminance(x)


def _smoothed(x: Tensor) -> Tensor:
    """torchvision's sharpness reference: [[1,1,1],[1,5,1],[1,1,1]]/13 inside, the one-pixel border kept."""
    rows = x[..., :-2, :] + x[..., 1:-1, :] + x[..., 2:, :]  # (B, C, H-2, W) vertical 3-sums
    box = rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:]  # (B, C, H-2, W-2) 3x3 sums
    out = x.clone()
    out[..., 1:-1, 1:-1] = (box + 4.0 * x[..., 1:-1, 1:-1]) / 13.0
    return out


def _warp(x: Tensor, op_index: Tensor, magnitude: Tensor) -> Tensor:
    """ShearX/Y, TranslateX/Y, Rotate as one nearest-neighbour warp, fill 0 (torchvision's RandAugment defaults)."""
    zero = torch.zeros_like(magnitude)

    def param(name: str, value: Tensor) -> Tensor:
        return torch.where(op_index == _OP_ID[name], value, zero)

    shear_about_corner = (op_index == _OP_ID["ShearX"]) | (op_index == _OP_ID["ShearY"])  # torchvision: center=[0, 0]
    matrix = _inverse_affine(
        angle=param("Rotate", -magnitude),  # F.rotate(a) is F.affine(-a)
        shear_x=param("ShearX", magnitude),
        shear_y=param("ShearY", magnitude),
        translate_x=param("TranslateX", magnitude.trunc()),  # torchvision: int(magnitude)
        translate_y=param("TranslateY", magnitude.trunc()),
        about_corner=shear_about_corner,
        size=x.shape[-2:],
    )
    return F.grid_sample(x, _affine_grid(matrix, x.shape[-2:]), mode="nearest", align_corners=False)


def _blend(x: Tensor, factor: Tensor, degenerate: Tensor) -> Tensor:
    """x * f + degenerate * (1 - f) per image, clamped to [0, 1] (torchvision's `_blend`); factor: (B,)."""
    factor = factor[:, None, None, None]
    return (x * factor + degenerate * (1.0 - factor)).clamp_(0.0, 1.0)


def _brightness(x: Tensor, magnitude: Tensor) -> Tensor:
    return _blend(x, 1.0 + magnitude, torch.zeros_like(x))


def _color(x: Tensor, magnitude: Tensor) -> Tensor:
    return _blend(x, 1.0 + magnitude, _grayscale(x))  # grey images: blends with itself, unchanged as in torchvision


def _contrast(x: Tensor, magnitude: Tensor) -> Tensor:
    return _blend(x, 1.0 + magnitude, _grayscale(x).mean(dim=(1, 2, 3), keepdim=True))


def _sharpness(x: Tensor, magnitude: Tensor) -> Tensor:
    return _blend(x, 1.0 + magnitude, _smoothed(x))


def _posterize(x: Tensor, bits: Tensor) -> Tensor:
    """Keep the top `bits[b]` bits of each 0-255 level (torchvision's uint8 posterize); 8 bits: unchanged."""
    step = torch.exp2(8.0 - bits.round().clamp(0.0, 8.0))[:, None, None, None]  # (B, 1, 1, 1) levels per bucket
    return torch.where(step > 1.0, torch.floor(torch.round(x * 255.0) / step) * step / 255.0, x)


def _solarize(x: Tensor, threshold: Tensor) -> Tensor:
    """Invert the levels at or above threshold[b] (on the 0-255 scale), as torchvision's solarize."""
    return torch.where(x >= (threshold / 255.0)[:, None, None, None], 1.0 - x, x)


def _autocontrast(x: Tensor, magnitude: Tensor | None = None) -> Tensor:
    """Stretch each channel to [0, 1]; flat channels unchanged. (No magnitude: it is there for a uniform signature.)"""
    low = x.amin(dim=(-2, -1), keepdim=True)  # (B, C, 1, 1)
    high = x.amax(dim=(-2, -1), keepdim=True)
    stretch = high > low
    low = torch.where(stretch, low, 0.0)
    scale = torch.where(stretch, 1.0 / (high - low), 1.0)
    return ((x - low) * scale).clamp_(0.0, 1.0)


def _equalize(x: Tensor, magnitude: Tensor | None = None) -> Tensor:
    """Histogram equalisation of each image and channel on 256 levels: torchvision's (PIL's) LUT, batched.

    (No magnitude: it is there for a uniform signature.)
    """
    batch, channels, height, width = x.shape
    levels = torch.round(x * 255.0).long().view(batch * channels, height * width)  # (BC, HW)
    hist = torch.zeros(batch * channels, 256, dtype=torch.long, device=x.device)
    hist.scatter_add_(1, levels, torch.ones_like(levels))
    cumulative = hist.cumsum(dim=1)  # (BC, 256)
    # PIL leaves the top level out of the step: the last non-zero bin is the first reaching the total.
    top_count = hist.gather(1, cumulative.argmax(dim=1, keepdim=True))  # (BC, 1)
    step = (height * width - top_count) // 255
    lut = ((cumulative[:, :-1] + step // 2) // step.clamp(min=1)).clamp_(0, 255)
    lut = F.pad(lut, (1, 0))  # lut[0] = 0
    equalized = torch.where(step > 0, lut.gather(1, levels), levels)  # step 0 (near-flat image): unchanged
    return equalized.view_as(x).float() / 255.0


_WARPS = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
assert [_OP_ID[name] for name in _WARPS] == list(range(_OP_ID[_WARPS[0]], _OP_ID[_WARPS[-1]] + 1))  # apply_ops
# The other ops, each a per-image function (x (B, C, H, W), magnitude (B,)) -> x; Identity needs none.
_PIXEL_OPS = {
    "Brightness": _brightness,
    "Color": _color,
    "Contrast": _contrast,
    "Sharpness": _sharpness,
    "Posterize": _posterize,
    "Solarize": _solarize,
    "AutoContrast": _autocontrast,
    "Equalize": _equalize,
}
