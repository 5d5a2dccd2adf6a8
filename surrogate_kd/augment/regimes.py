"""The paper's augmentation regimes, the `augment` pipeline that draws and applies them, mixup and a preview."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..errors import UserError
from ..registry import REGIMES
from ..runtime import resolve_strategy
from ._per_sample import apply_grouped, randint, uniform
from .randaugment import apply_ops, draw_ops
from .spatial import draw_erasing_boxes, elastic, elastic_displacement, erase, flip_crop


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


REGIMES.register("none", Regime())
_STANDARD = REGIMES.register("standard", Regime(randaugment_n=2, randaugment_m=14, flip_p=0.5, crop_padding=4))
_HIGH = REGIMES.register("high", dataclasses.replace(_STANDARD, randaugment_n=4, elastic_p=0.5, invert_p=0.1))
# m=30 is the top of torchvision's scale, i.e. every op at its maximum; p=0.5 is RandomErasing's default.
REGIMES.register("extreme", dataclasses.replace(_HIGH, randaugment_n=8, randaugment_m=30, erasing_p=0.5))


def get_regime(name: str, **overrides) -> Regime:
    """A named regime with some fields replaced; values may be strings (from the command line)."""
    regime = REGIMES.get(name)
    field_types = {f.name: f.type for f in dataclasses.fields(Regime)}  # 'int' / 'float' (postponed annotations)
    unknown = sorted(set(overrides) - set(field_types))
    if unknown:
        raise UserError(f"unknown augmentation field(s) {', '.join(unknown)}; valid: {', '.join(field_types)}")
    return dataclasses.replace(regime, **{k: _field_value(k, field_types[k], v) for k, v in overrides.items()})


def _field_value(field: str, kind: str, value) -> int | float:
    """A command-line or YAML value for a Regime field of type `kind` ('int' or 'float'), else UserError.

    Strings are parsed ("2", "0.25"); booleans are refused although Python counts them as numbers
    (`invert_p=true` is a mistake, not 1.0), and so are fractions for integer fields.
    """
    number = None
    if not isinstance(value, bool):
        try:
            number = float(value)
        except (TypeError, ValueError):
            pass
    if number is None or not math.isfinite(number) or (kind == "int" and not number.is_integer()):
        what = "an integer" if kind == "int" else "a number"
        raise UserError(f"augmentation {field} must be {what}, got {value!r}")
    return int(number) if kind == "int" else number


def augment(images: Tensor, regime: Regime, generator: torch.Generator, strategy: str | None = None) -> Tensor:
    """(B, C, H, W) uint8 on any device -> (B, C, H, W) float32 in [0, 1] on the same device; C is 1 or 3.

    Order: RandAugment (n ops per image), flip, padded crop, elastic, invert, erasing. Parameters
    come from `generator` only (on its own device; a CPU generator gives identical draws on any
    device). `strategy`: how images meet the ops they drew, 'gather' (CPU default) or 'where'
    (accelerator default: a fixed sequence of ops, no host sync, capturable in a CUDA graph);
    both give the same images.
    """
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise UserError(f"augment wants (B, 1|3, H, W) uint8 images, got {tuple(images.shape)} {images.dtype}")
    batch, _, height, width = images.shape
    device = images.device
    strategy = resolve_strategy(strategy, device, "augmentation strategy")
    x = images.float().div_(255.0)  # (B, C, H, W) float32 in [0, 1]
    for _ in range(regime.randaugment_n):
        x = apply_ops(x, *draw_ops(batch, regime.randaugment_m, height, width, generator, device), strategy=strategy)
    if regime.flip_p > 0 or regime.crop_padding > 0:
        flip = uniform(generator, (batch,), device) < regime.flip_p
        top, left = randint(generator, 2 * regime.crop_padding + 1, (2, batch), device)
        x = flip_crop(x, flip, top, left, regime.crop_padding)
    if regime.elastic_p > 0:
        # Noise for every image, chosen or not, so the draws do not depend on the device's strategy.
        noise = uniform(generator, (batch, 2, height, width), device) * 2.0 - 1.0
        chosen = uniform(generator, (batch,), device) < regime.elastic_p

        def warp(images: Tensor, noise: Tensor) -> Tensor:
            return elastic(images, elastic_displacement(noise, regime.elastic_alpha, regime.elastic_sigma))

        x = apply_grouped(chosen.long(), {1: warp}, x, noise, sort=strategy == "gather")
    if regime.invert_p > 0:
        chosen = uniform(generator, (batch,), device) < regime.invert_p
        x = torch.where(chosen[:, None, None, None], 1.0 - x, x)
    if regime.erasing_p > 0:
        x = erase(x, *draw_erasing_boxes(batch, (height, width), regime.erasing_p, generator, device))
    return x


def mixup(x: Tensor, generator: torch.Generator, per_sample: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """x (B, C, H, W) float -> (mixed, lam, perm), mixed = lam * x + (1 - lam) * x[perm].

    lam ~ U(0, 1) (the paper's mixup), one per batch (shape (1,)) or one per image ((B,)); the caller
    mixes teacher targets or labels with the same lam and perm. Draws from `generator` only; the
    same few ops at any batch size, no host sync.
    """
    batch = x.shape[0]
    lam = uniform(generator, (batch if per_sample else 1,), x.device)
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
