"""Batch-in / batch-out augmentation on the device, with per-sample random parameters.

The regimes are the paper's (Sect. 4 "Distillation Training Details", Table 5): `none`,
`standard` (the teacher recipe), `high` (the synthetic-data recipe) and `extreme`, plus mixup.
Every image in a batch draws its own ops and magnitudes from the caller's generator, and the
whole batch is transformed at once: per-sample matrices for the warps, masks and `torch.where`
for everything else, no Python loop over images and no data-dependent branch.

The kernels (`apply_ops`, `flip_crop`, `elastic`, `erase`) take explicit per-sample parameters,
like `torchvision.transforms.v2.functional`, and follow torchvision's semantics: RandAugment's op
list and magnitude mapping, nearest warps with fill 0, ElasticTransform's displacement field,
RandomErasing's box sampling. `augment` draws the parameters and calls them. Images are float in
[0, 1] between ops instead of torchvision's uint8, so results differ from it by rounding (at
most a couple of grey levels); see docs/augmentation.md.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import UserError

# torchvision's RandAugment ops, in its order (`RandAugment._augmentation_space`).
RANDAUGMENT_OPS = (
    "Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness",
    "Color", "Contrast", "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize",
)  # fmt: skip
_OP_ID = {name: i for i, name in enumerate(RANDAUGMENT_OPS)}
MAX_MAGNITUDE = 30  # torchvision's num_magnitude_bins=31: magnitudes 0..30; larger ones are clipped


@dataclass(frozen=True)
class Regime:
    """One augmentation recipe. Probabilities are per image; `randaugment_m` is on torchvision's 0-30 scale."""

    randaugment_n: int = 0
    randaugment_m: float = 0
    flip_p: float = 0.0
    crop_padding: int = 0
    elastic_p: float = 0.0
    elastic_alpha: float = 50.0
    elastic_sigma: float = 5.0
    invert_p: float = 0.0
    erasing_p: float = 0.0

    def __post_init__(self) -> None:
        for name in ("flip_p", "elastic_p", "invert_p", "erasing_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise UserError(f"augmentation {name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("randaugment_n", "randaugment_m", "crop_padding", "elastic_alpha", "elastic_sigma"):
            if getattr(self, name) < 0:
                raise UserError(f"augmentation {name} must be >= 0, got {getattr(self, name)}")


_STANDARD = Regime(randaugment_n=2, randaugment_m=14, flip_p=0.5, crop_padding=4)
_HIGH = dataclasses.replace(_STANDARD, randaugment_n=4, elastic_p=0.5, invert_p=0.1)
REGIMES: dict[str, Regime] = {
    "none": Regime(),
    "standard": _STANDARD,
    "high": _HIGH,
    # m=30 is the top of torchvision's scale, i.e. every op at its maximum; p=0.5 is RandomErasing's default.
    "extreme": dataclasses.replace(_HIGH, randaugment_n=8, randaugment_m=30, erasing_p=0.5),
}


def get_regime(name: str, **overrides) -> Regime:
    """A named regime with some fields replaced; values may be strings (from the command line)."""
    if name not in REGIMES:
        raise UserError(f"unknown augmentation regime '{name}'; valid: {', '.join(REGIMES)}")
    field_types = {f.name: f.type for f in dataclasses.fields(Regime)}  # 'int' / 'float' (postponed annotations)
    unknown = sorted(set(overrides) - set(field_types))
    if unknown:
        raise UserError(f"unknown augmentation field(s) {', '.join(unknown)}; valid: {', '.join(field_types)}")
    try:
        values = {k: {"int": int, "float": float}[field_types[k]](v) for k, v in overrides.items()}
    except ValueError as e:
        raise UserError(f"bad augmentation override {overrides}: {e}") from None
    return dataclasses.replace(REGIMES[name], **values)


def _uniform(generator: torch.Generator, shape: tuple[int, ...], device: torch.device) -> Tensor:
    """U[0, 1) drawn on the generator's device, then moved: a CPU generator gives the same draws on every device."""
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


def _randint(generator: torch.Generator, high: int, shape: tuple[int, ...], device: torch.device) -> Tensor:
    return torch.randint(high, shape, generator=generator, device=generator.device).to(device)


# ---------------------------------------------------------------------------- RandAugment


def op_magnitudes(magnitude: float, height: int, width: int) -> tuple[Tensor, Tensor]:
    """torchvision RandAugment's `_augmentation_space` at one magnitude: per op (value, signed), each (14,).

    Values are in the units torchvision's `_apply_op` takes (shear factor, pixels, degrees,
    factor - 1, bits, threshold on 0-255). `magnitude` is clipped to [0, 30], so m=30 puts every op
    at its maximum; fractional magnitudes interpolate linearly between torchvision's bins.
    """
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
    values = torch.tensor([table.get(name, (0.0, False))[0] for name in RANDAUGMENT_OPS])
    signed = torch.tensor([table.get(name, (0.0, False))[1] for name in RANDAUGMENT_OPS])
    return values, signed


def draw_ops(
    batch: int, magnitude: float, height: int, width: int, generator: torch.Generator, device: torch.device
) -> tuple[Tensor, Tensor]:
    """One RandAugment draw per image, as torchvision does it: a uniform op and, for signed ops, a random sign."""
    values, signed = (t.to(device) for t in op_magnitudes(magnitude, height, width))
    op_index = _randint(generator, len(RANDAUGMENT_OPS), (batch,), device)  # (B,)
    negate = (_uniform(generator, (batch,), device) < 0.5) & signed[op_index]
    return op_index, torch.where(negate, -values[op_index], values[op_index])


def apply_ops(x: Tensor, op_index: Tensor, magnitude: Tensor) -> Tensor:
    """Apply op RANDAUGMENT_OPS[op_index[b]] with magnitude[b] (torchvision's units) to each image b.

    x: (B, C, H, W) float in [0, 1]. Ops of one family share one pass over the batch (all warps
    are one `grid_sample` with per-sample matrices, all blends one lerp with per-sample factors);
    an image that did not choose an op goes through that op's pass with its neutral parameter,
    which leaves it bit-for-bit unchanged.
    """
    chosen = {name: op_index == i for i, name in enumerate(RANDAUGMENT_OPS)}  # name -> (B,) bool
    zero = torch.zeros_like(magnitude)

    # Shear, translate, rotate: one nearest-neighbour warp, fill 0 (torchvision's RandAugment defaults).
    angle = torch.where(chosen["Rotate"], -magnitude, zero)  # F.rotate(a) is F.affine(-a)
    shear_x = torch.where(chosen["ShearX"], magnitude, zero)
    shear_y = torch.where(chosen["ShearY"], magnitude, zero)
    translate_x = torch.where(chosen["TranslateX"], magnitude.trunc(), zero)  # torchvision: int(magnitude)
    translate_y = torch.where(chosen["TranslateY"], magnitude.trunc(), zero)
    shear_about_corner = chosen["ShearX"] | chosen["ShearY"]  # torchvision shears with center=[0, 0]
    matrix = _inverse_affine(angle, shear_x, shear_y, translate_x, translate_y, shear_about_corner, x.shape[-2:])
    x = F.grid_sample(x, _affine_grid(matrix, x.shape[-2:]), mode="nearest", align_corners=False)

    # Brightness, Color, Contrast, Sharpness: blend with a per-image degenerate image (factor 1 = unchanged).
    blends = chosen["Brightness"] | chosen["Color"] | chosen["Contrast"] | chosen["Sharpness"]
    factor = torch.where(blends, 1.0 + magnitude, 1.0 + zero)[:, None, None, None]  # (B, 1, 1, 1)
    gray = _grayscale(x)  # (B, 1, H, W)
    degenerate = torch.where(
        chosen["Color"][:, None, None, None],
        gray,
        torch.where(
            chosen["Contrast"][:, None, None, None],
            gray.mean(dim=(1, 2, 3), keepdim=True),
            torch.where(chosen["Sharpness"][:, None, None, None], _smoothed(x), 0.0),  # Brightness blends with 0
        ),
    )
    x = (x * factor + degenerate * (1.0 - factor)).clamp_(0.0, 1.0)

    # Posterize, Solarize, AutoContrast, Equalize: per-pixel maps on the 0-255 levels.
    posterize = chosen["Posterize"] & (magnitude < 8)  # 8 bits: unchanged, as torchvision's uint8 posterize
    x = torch.where(posterize[:, None, None, None], _posterize(x, torch.where(posterize, magnitude, 8.0)), x)
    threshold = torch.where(chosen["Solarize"], magnitude / 255.0, math.inf)[:, None, None, None]
    x = torch.where(x >= threshold, 1.0 - x, x)
    x = _autocontrast(x, chosen["AutoContrast"])
    return torch.where(chosen["Equalize"][:, None, None, None], _equalize(x), x)


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


def _pixel_centres(n: int, device: torch.device) -> Tensor:
    """(n,) pixel-centre coordinates with the origin at the image centre (align_corners=False)."""
    return torch.linspace((1.0 - n) * 0.5, (n - 1.0) * 0.5, n, device=device)


def _affine_grid(matrix: Tensor, size: tuple[int, int]) -> Tensor:
    """Sampling grid (B, H, W, 2) for `grid_sample` from per-image pixel maps (B, 2, 3), as torchvision's `_affine_grid`.

    Written as broadcast multiply-adds: with only three columns, F.affine_grid's batched matmul
    is ~10x slower on CPU.
    """
    height, width = size
    m = matrix / matrix.new_tensor([0.5 * width, 0.5 * height])[None, :, None]  # to normalised coordinates
    m = m[:, :, :, None, None]  # (B, 2, 3, 1, 1)
    xs = _pixel_centres(width, matrix.device)  # (W,)
    ys = _pixel_centres(height, matrix.device)[:, None]  # (H, 1)
    grid = m[:, :, 0] * xs + m[:, :, 1] * ys + m[:, :, 2]  # (B, 2, H, W)
    return grid.permute(0, 2, 3, 1)


def _grayscale(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, 1, H, W) luma with torchvision's weights; a grey image is its own."""
    if x.shape[1] == 1:
        return x
    return (x * x.new_tensor([0.2989, 0.587, 0.114])[:, None, None]).sum(dim=1, keepdim=True)


def _smoothed(x: Tensor) -> Tensor:
    """torchvision's sharpness reference: [[1,1,1],[1,5,1],[1,1,1]]/13 inside, the one-pixel border kept."""
    rows = x[..., :-2, :] + x[..., 1:-1, :] + x[..., 2:, :]  # (B, C, H-2, W) vertical 3-sums
    box = rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:]  # (B, C, H-2, W-2) 3x3 sums
    out = x.clone()
    out[..., 1:-1, 1:-1] = (box + 4.0 * x[..., 1:-1, 1:-1]) / 13.0
    return out


def _posterize(x: Tensor, bits: Tensor) -> Tensor:
    """Keep the top `bits[b]` bits of each 0-255 level (torchvision's uint8 posterize)."""
    step = torch.exp2(8.0 - bits.round())[:, None, None, None]  # (B, 1, 1, 1) levels per bucket
    return torch.floor(torch.round(x * 255.0) / step) * step / 255.0


def _autocontrast(x: Tensor, chosen: Tensor) -> Tensor:
    """Stretch each channel of the chosen images to [0, 1]; flat channels and other images unchanged."""
    low = x.amin(dim=(-2, -1), keepdim=True)  # (B, C, 1, 1)
    high = x.amax(dim=(-2, -1), keepdim=True)
    stretch = chosen[:, None, None, None] & (high > low)
    low = torch.where(stretch, low, 0.0)
    scale = torch.where(stretch, 1.0 / (high - low), 1.0)
    return ((x - low) * scale).clamp_(0.0, 1.0)


def _equalize(x: Tensor) -> Tensor:
    """Histogram equalisation of each image and channel on 256 levels: torchvision's (PIL's) LUT, batched."""
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


# ---------------------------------------------------------------------------- flip, crop, elastic, invert, erase


def flip_crop(x: Tensor, flip: Tensor, top: Tensor, left: Tensor, padding: int) -> Tensor:
    """RandomHorizontalFlip then RandomCrop(padding, fill 0) per image, as two gathers.

    flip: (B,) bool; top, left: (B,) offsets in [0, 2 * padding] into the zero-padded image.
    """
    batch, channels, height, width = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))  # (B, C, H+2p, W+2p)
    rows = top[:, None] + torch.arange(height, device=x.device)  # (B, H)
    j = torch.arange(width, device=x.device)
    # Cropping a flipped image = reading the padded image right to left from the mirrored offset.
    cols = torch.where(flip[:, None], width - 1 + 2 * padding - left[:, None] - j, left[:, None] + j)  # (B, W)
    x = padded.gather(2, rows[:, None, :, None].expand(-1, channels, -1, width + 2 * padding))
    return x.gather(3, cols[:, None, None, :].expand(-1, channels, height, -1))


@functools.lru_cache(maxsize=16)
def _gaussian_blur_matrix(size: int, sigma: float, device: torch.device) -> Tensor:
    """(size, size) M with `v @ M` = torchvision's gaussian_blur of v along one axis (reflect padding).

    Kernel as ElasticTransform builds it: int(8 * sigma + 1) taps made odd, torchvision's
    `_get_gaussian_kernel1d`. Reflecting repeatedly lets the kernel outgrow small images (torchvision
    raises there). As a matrix, blurring a whole batch of fields is two matmuls: far cheaper on CPU
    than a 41-tap convolution.
    """
    taps = int(8 * sigma + 1) | 1  # odd
    lim = (taps - 1) / (2.0 * math.sqrt(2.0))
    kernel = torch.softmax(-((torch.linspace(-lim, lim, taps) / sigma) ** 2), dim=0)  # (taps,)
    source = torch.arange(size)[:, None] + torch.arange(taps) - taps // 2  # (size, taps) input index per output
    if size > 1:
        period = 2 * (size - 1)
        source = source.remainder(period)
        source = torch.where(source >= size, period - source, source)
    else:
        source = torch.zeros_like(source)
    output = torch.arange(size)[:, None].expand_as(source)
    matrix = torch.zeros(size, size).index_put_((source, output), kernel.expand_as(source), accumulate=True)
    return matrix.to(device)


def elastic_displacement(noise: Tensor, alpha: float, sigma: float) -> Tensor:
    """ElasticTransform's displacement from uniform noise (B, 2, H, W) in [-1, 1]: (B, H, W, 2), normalised units."""
    height, width = noise.shape[-2:]
    if sigma > 0:
        blur_rows = _gaussian_blur_matrix(height, float(sigma), noise.device)
        blur_cols = _gaussian_blur_matrix(width, float(sigma), noise.device)
        noise = blur_rows.T @ noise @ blur_cols
    scale = noise.new_tensor([alpha / width, alpha / height])[None, :, None, None]
    return (noise * scale).permute(0, 2, 3, 1)


def elastic(x: Tensor, displacement: Tensor) -> Tensor:
    """torchvision's F.elastic (bilinear, fill 0) with one displacement field (B, H, W, 2) per image."""
    height, width = x.shape[-2:]
    size = x.new_tensor([width, height])
    xs, ys = _pixel_centres(width, x.device) * 2 / width, _pixel_centres(height, x.device)[:, None] * 2 / height
    identity = torch.stack(torch.broadcast_tensors(xs, ys), dim=-1)  # (H, W, 2)
    grid = identity + displacement  # (B, H, W, 2)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    # torchvision applies fill=0 by warping a ones-mask alongside and multiplying by it, which dims
    # pixels sampled across the border a second time; match it so the two agree there. The warped
    # mask is the product of the 1-D in-bounds bilinear weights.
    position = ((grid + 1.0) * size - 1.0) / 2.0  # (B, H, W, 2) input pixel coordinates
    coverage = torch.minimum(position + 1.0, size - position).clamp_(0.0, 1.0).prod(dim=-1)  # (B, H, W)
    return out * coverage[:, None]


def erase(x: Tensor, top: Tensor, left: Tensor, height: Tensor, width: Tensor) -> Tensor:
    """Zero a box per image (torchvision F.erase, value 0); all (B,) integer tensors, height 0 = no box."""
    rows = torch.arange(x.shape[-2], device=x.device)
    cols = torch.arange(x.shape[-1], device=x.device)
    in_rows = (rows >= top[:, None]) & (rows < (top + height)[:, None])  # (B, H)
    in_cols = (cols >= left[:, None]) & (cols < (left + width)[:, None])  # (B, W)
    return x.masked_fill(in_rows[:, None, :, None] & in_cols[:, None, None, :], 0.0)


def _draw_erasing_boxes(
    batch: int, size: tuple[int, int], p: float, generator: torch.Generator, device: torch.device, attempts: int = 10
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """RandomErasing's box per image (scale 0.02-0.33, ratio 0.3-3.3): the first of 10 tries that fits, else none."""
    image_height, image_width = size
    u = _uniform(generator, (5, batch, attempts), device)
    area = image_height * image_width * (0.02 + (0.33 - 0.02) * u[0])
    log_ratio = math.log(0.3) + (math.log(3.3) - math.log(0.3)) * u[1]
    height = torch.sqrt(area * torch.exp(log_ratio)).round().long()  # (B, attempts)
    width = torch.sqrt(area / torch.exp(log_ratio)).round().long()
    fits = (height < image_height) & (width < image_width)
    first = fits.long().argmax(dim=1, keepdim=True)  # argmax returns the first of equal maxima
    apply = fits.any(dim=1) & (u[2, :, 0] < p)
    height = torch.where(apply, height.gather(1, first).squeeze(1), 0)
    width = torch.where(apply, width.gather(1, first).squeeze(1), 0)
    top = (u[3, :, 0] * (image_height - height + 1)).long()
    left = (u[4, :, 0] * (image_width - width + 1)).long()
    return top, left, height, width


# ---------------------------------------------------------------------------- the public entry points


def augment(images: Tensor, regime: Regime, generator: torch.Generator) -> Tensor:
    """(B, C, H, W) uint8 on any device -> (B, C, H, W) float32 in [0, 1] on the same device; C is 1 or 3.

    Order: RandAugment (n ops per image), flip, padded crop, elastic, invert, erasing. Parameters
    come from `generator` (on its own device; a CPU generator gives identical draws on any device).
    """
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise UserError(f"augment wants (B, 1|3, H, W) uint8 images, got {tuple(images.shape)} {images.dtype}")
    batch, _, height, width = images.shape
    device = images.device
    x = images.float().div_(255.0)  # (B, C, H, W) float32 in [0, 1]
    for _ in range(regime.randaugment_n):
        x = apply_ops(x, *draw_ops(batch, regime.randaugment_m, height, width, generator, device))
    if regime.flip_p > 0 or regime.crop_padding > 0:
        flip = _uniform(generator, (batch,), device) < regime.flip_p
        top, left = _randint(generator, 2 * regime.crop_padding + 1, (2, batch), device)
        x = flip_crop(x, flip, top, left, regime.crop_padding)
    if regime.elastic_p > 0:
        noise = _uniform(generator, (batch, 2, height, width), device) * 2.0 - 1.0
        chosen = _uniform(generator, (batch,), device) < regime.elastic_p
        displacement = elastic_displacement(noise, regime.elastic_alpha, regime.elastic_sigma)
        x = elastic(x, displacement * chosen[:, None, None, None])  # zero field: unchanged
    if regime.invert_p > 0:
        chosen = _uniform(generator, (batch,), device) < regime.invert_p
        x = torch.where(chosen[:, None, None, None], 1.0 - x, x)
    if regime.erasing_p > 0:
        x = erase(x, *_draw_erasing_boxes(batch, (height, width), regime.erasing_p, generator, device))
    return x


def mixup(x: Tensor, generator: torch.Generator, per_sample: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """x (B, C, H, W) float -> (mixed, lam, perm), mixed = lam * x + (1 - lam) * x[perm].

    lam ~ U(0, 1) (the paper's mixup), one per batch (shape (1,)) or one per image ((B,)); the caller
    mixes teacher targets or labels with the same lam and perm.
    """
    batch = x.shape[0]
    lam = _uniform(generator, (batch if per_sample else 1,), x.device)
    perm = torch.randperm(batch, generator=generator, device=generator.device).to(x.device)
    weight = lam[:, None, None, None]
    return weight * x + (1.0 - weight) * x[perm], lam, perm


def augment_preview(image: Tensor, regime: Regime, n: int, out_png: str | Path, seed: int = 0) -> Path:
    """Save a grid of one uint8 image (C, H, W) under n independent draws of the regime; returns the path."""
    from torchvision.utils import save_image  # only the preview needs PIL

    generator = torch.Generator().manual_seed(seed)
    views = augment(image.expand(n, -1, -1, -1).cpu(), regime, generator)  # (n, C, H, W)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    save_image(views, out_png, nrow=math.ceil(math.sqrt(n)), padding=1)
    return out_png
