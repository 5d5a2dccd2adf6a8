"""Batch-in / batch-out augmentation on the device, with per-sample random parameters.

The regimes are the paper's (Sect. 4 "Distillation Training Details", Table 5): `none`,
`standard` (the teacher recipe), `high` (the synthetic-data recipe) and `extreme`, plus mixup.
Every image in a batch draws its own ops and magnitudes from the caller's generator, and the
whole batch is transformed at once (per-image warp matrices, masks, gathers): no Python loop
over images.

    regimes.py      Regime, the REGIMES registry, get_regime, augment(), mixup(), augment_preview()
    randaugment.py  torchvision's RandAugment ops and magnitudes, one op per image per draw
    spatial.py      flip + padded crop, elastic, erasing
    _per_sample.py  draws from the generator; `apply_grouped`: each image through the op it chose
                    (the sources' per-image programs use it too); the 'gather' / 'where'
                    strategies; constants cached per device; `luminance`

The kernels (`apply_ops`, `flip_crop`, `elastic`, `erase`) take explicit per-image parameters,
like `torchvision.transforms.v2.functional`, and follow its semantics; `augment` draws the
parameters and calls them. On an accelerator (strategy 'where') `augment` + `mixup` dispatch the
same ops at any batch size, with no host sync and no tensor from Python data: a CUDA graph can
capture them (docs/augmentation.md, "GPU readiness"). Images stay float in [0, 1] between ops instead of torchvision's
uint8, so results differ from it by rounding only (about one grey level); see docs/augmentation.md.
"""

from ..runtime import STRATEGIES, default_strategy
from ._per_sample import apply_grouped, luminance
from .randaugment import MAX_MAGNITUDE, RANDAUGMENT_OPS, apply_op, apply_ops, draw_ops, op_magnitudes
from .regimes import REGIMES, Regime, augment, augment_preview, get_regime, mixup
from .spatial import elastic, elastic_displacement, erase, flip_crop

__all__ = [
    "MAX_MAGNITUDE", "RANDAUGMENT_OPS", "REGIMES", "Regime", "STRATEGIES", "apply_grouped", "apply_op",
    "apply_ops", "augment", "augment_preview", "default_strategy", "draw_ops", "elastic", "elastic_displacement",
    "erase", "flip_crop", "get_regime", "luminance", "mixup", "op_magnitudes",
]  # fmt: skip
