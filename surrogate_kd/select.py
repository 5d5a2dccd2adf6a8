"""Teacher predictions -> class histogram, relative entropy, and the paper's balanced set D_K.

Paper Sect. 3.2, Eq. 1: for every class c_i the teacher predicts, draw N_i images at random from
those predicted as c_i; replicate a class predicted fewer than N_i times up to N_i; skip a class
never predicted and draw its share from the other classes, so the total is kept.
"""

import math

import torch

from .errors import UserError


def class_histogram(predictions: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N,) predicted class ids -> (num_classes,) int64 counts."""
    return torch.bincount(predictions.flatten().cpu(), minlength=num_classes)[:num_classes]


def relative_entropy(counts: torch.Tensor) -> float:
    """H(p) / log(C) of a class histogram (paper Table 3): 1 = all classes equally, 0 = one class."""
    counts = counts.double()
    if counts.numel() < 2:
        raise UserError("relative entropy needs at least two classes")
    total = counts.sum()
    if total <= 0:
        raise UserError("relative entropy of an empty histogram")
    p = counts[counts > 0] / total
    return float(-(p * p.log()).sum() / math.log(counts.numel()))


def class_quotas(counts: torch.Tensor, total: int, generator: torch.Generator) -> torch.Tensor:
    """Split `total` evenly over the classes that were predicted at least once.

    Classes never predicted get 0 and their share goes to the others; when `total` does not
    divide evenly, a random subset of classes gets one more, so no class is always favoured.
    """
    present = (counts > 0).nonzero().flatten()
    if present.numel() == 0:
        raise UserError("the teacher predicted no class at all (empty image set?)")
    quotas = torch.zeros_like(counts)
    base, extra = divmod(total, present.numel())
    quotas[present] = base
    lucky = present[torch.randperm(present.numel(), generator=generator)[:extra]]
    quotas[lucky] += 1
    return quotas


def balanced_indices(predictions: torch.Tensor, num_classes: int, per_class: int, total: int | None = None,
                     seed: int = 0) -> torch.Tensor:
    """Indices into the candidate set forming D_K: `per_class` images per predicted class.

    `total` (default per_class * num_classes) is kept even when classes are missing. Classes with
    too few candidates are replicated: whole copies first, then a random remainder.
    """
    if per_class <= 0:
        raise UserError(f"per-class count must be positive, got {per_class}")
    predictions = predictions.flatten().cpu()
    generator = torch.Generator().manual_seed(seed)
    counts = class_histogram(predictions, num_classes)
    quotas = class_quotas(counts, total if total is not None else per_class * num_classes, generator)
    chosen = []
    for c in range(num_classes):
        quota = int(quotas[c])
        if quota == 0:
            continue
        members = (predictions == c).nonzero().flatten()
        copies, remainder = divmod(quota, members.numel())
        shuffled = members[torch.randperm(members.numel(), generator=generator)]
        chosen += [members] * copies + [shuffled[:remainder]]
    order = torch.cat(chosen)
    return order[torch.randperm(order.numel(), generator=generator)]
