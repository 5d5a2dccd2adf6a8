"""Teacher-guided distillation sets: the quotas of the paper's D_K, and `select`, which writes one as a pool.

Paper Sect. 3.2, Eq. 1: for every class c_i the teacher predicts, draw N_i images at random from
those predicted as c_i; replicate a class predicted fewer than N_i times up to N_i; skip a class
never predicted and draw its share from the other classes, so the total is kept.
docs/selection.md describes the quotas, the long-tail variant (Table 4) and the online stream.
"""

from pathlib import Path

import torch

from .errors import UserError
from .pool import write_pool
from .adapt import adapted_params, adapts_by_default
from .recipe import CANDIDATES
from .runtime import predict, resolve_device
from .teacher import Candidates, class_histogram, load_teacher, relative_entropy, scan_candidates, teacher_fingerprint

DEFAULT_CAP = 50000  # paper Sect. 3.1: at most 50K surrogate images per distillation


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


def long_tail_quotas(counts: torch.Tensor, total: int, ratio: float) -> torch.Tensor:
    """Split `total` over the predicted classes with quotas decaying geometrically by `ratio`.

    The most predicted class gets the largest quota and the least predicted (but present) class
    a quota `ratio` times smaller, the classes in between on a geometric scale (the paper's
    long-tail subset, Table 4). Following the data's own frequency order keeps replication low.
    Rounding hands the leftover images to the largest fractional parts, so the total is exact.
    """
    if not ratio >= 1:
        raise UserError(f"long-tail ratio (largest / smallest quota) must be >= 1, got {ratio}")
    present = (counts > 0).nonzero().flatten()
    if present.numel() == 0:
        raise UserError("the teacher predicted no class at all (empty image set?)")
    # Most predicted first; a stable sort keeps ties in class order, so quotas are deterministic.
    order = present[torch.sort(-counts[present], stable=True).indices]
    steps = torch.arange(order.numel(), dtype=torch.float64) / max(1, order.numel() - 1)
    shares = ratio ** -steps
    exact = shares / shares.sum() * total
    floor = exact.floor().long()
    leftover = total - int(floor.sum())
    floor[torch.sort(-(exact - floor), stable=True).indices[:leftover]] += 1
    quotas = torch.zeros_like(counts)
    quotas[order] = floor
    return quotas


def indices_for_quotas(predictions: torch.Tensor, quotas: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Indices with quotas[c] images predicted as c, shuffled; a class with too few candidates is
    replicated (whole copies first, then a random remainder). Every class with a quota must occur."""
    chosen = []
    for c in range(quotas.numel()):
        quota = int(quotas[c])
        if quota == 0:
            continue
        members = (predictions == c).nonzero().flatten()
        if members.numel() == 0:
            raise UserError(f"class {c} has a quota of {quota} but no candidate is predicted as it")
        copies, remainder = divmod(quota, members.numel())
        shuffled = members[torch.randperm(members.numel(), generator=generator)]
        chosen += [members] * copies + [shuffled[:remainder]]
    order = torch.cat(chosen)
    return order[torch.randperm(order.numel(), generator=generator)]


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
    return indices_for_quotas(predictions, quotas, generator)



def select(teacher, data: str, out: str | Path, per_class: int, total: int | None = None, long_tail: float | None = None,
           cap: int = DEFAULT_CAP, seed: int = 0, candidates: int = CANDIDATES, device: str = "auto", batch_size: int = 1024,
           overwrite: bool = False, download: bool = False, adapt: bool | None = None) -> dict:
    """Write the teacher-guided set D_K drawn from `data` as a pool at `out` (paper Sect. 3.2).

    `total` images (default per_class x classes, at most `cap`) split evenly over the classes the
    teacher predicts, or with `long_tail=RATIO` decaying geometrically from the most to the least
    predicted class. The pool holds copies of the images, labels = teacher argmax and the
    teacher's logits, so `distill` reads it without asking the teacher again. Shaders are steered by
    the teacher first when `adapt` (None: `distill`'s rule, adapt.adapts_by_default), so `select`
    draws the candidates `distill` would.
    """
    if per_class <= 0:
        raise UserError(f"per-class count must be positive, got {per_class}")
    if cap <= 0:
        raise UserError(f"cap must be a positive number of images, got {cap}")
    if candidates < 0:
        raise UserError(f"candidates must be >= 0 (0: all of a stored set), got {candidates}")
    if long_tail is not None and not long_tail >= 1:
        raise UserError(f"long-tail ratio (largest / smallest quota) must be >= 1, got {long_tail}")
    if adapt and data != "shaders":
        raise UserError(f"adapt steers shader programs; '{data}' is not shaders")
    model = load_teacher(teacher)
    num_classes = model.num_classes
    requested = total if total is not None else per_class * num_classes
    if requested <= 0:
        raise UserError(f"total must be positive, got {requested}")
    kept_total = min(requested, cap)
    dev = resolve_device(device)
    adapted = {}
    if adapts_by_default(data, num_classes) if adapt is None else adapt:
        params, adapted = adapted_params(model, {}, seed, dev)
        found = Candidates(model.spec, data, candidates, seed, download, params)
    else:
        found = Candidates(model.spec, data, candidates, seed, download)
    predictions = torch.from_numpy(scan_candidates(model, found, dev, batch_size)["predicted"]).long()
    counts = class_histogram(predictions, num_classes)
    generator = torch.Generator().manual_seed(seed)
    quotas = (long_tail_quotas(counts, kept_total, long_tail) if long_tail is not None
              else class_quotas(counts, kept_total, generator))
    index = indices_for_quotas(predictions, quotas, generator)
    manifest = {"source": "selection", "seed": seed, "classes": list(model.spec.classes),
                "teacher": str(teacher) if not isinstance(teacher, torch.nn.Module) else model.arch,
                "params": {"data": data, "per_class": per_class, "total": kept_total, "long_tail": long_tail,
                           "cap": cap, "candidates": len(found), "adapt": adapted or None}}
    path = write_selection(model, found, index, predictions[index], out, manifest, dev, batch_size, overwrite)
    selected = class_histogram(predictions[index], num_classes)
    return {"out": str(path), "data": data, **({"adapt": adapted} if adapted else {}),
            "candidates": len(found), "selected": len(index),
            "capped": requested > cap, "replicated": len(index) - int(index.unique().numel()),
            "relative_entropy_candidates": round(relative_entropy(counts), 4),
            "relative_entropy_selected": round(relative_entropy(selected), 4),
            "class_histogram_candidates": counts.tolist(), "class_histogram_selected": selected.tolist()}


def write_selection(teacher, candidates: Candidates, index: torch.Tensor, labels: torch.Tensor, out: str | Path,
                    manifest: dict, device: torch.device | None = None, batch_size: int = 1024,
                    overwrite: bool = False) -> Path:
    """Pass 2 of a selection: the candidates at `index` (S,), written as a pool with their labels
    (S,) and the teacher's logits (S, K), a chunk at a time (only the logits are held whole).

    The logits are those of the images as written, so `distill`, `score` and `select` read them
    from the pool instead of asking the teacher again (teacher.teacher_logits).
    """
    logits = torch.empty(len(index), teacher.num_classes)  # (S, K), filled as the chunks are written

    def chunks():
        done = 0
        for _, images in candidates.chunks(index):
            logits[done:done + len(images)] = predict(teacher, images, batch_size=batch_size, device=device)
            done += len(images)
            yield images

    # write_pool saves `logits` after the last image batch: by then every row is filled.
    return write_pool(out, chunks(), {**manifest, "teacher_fingerprint": teacher_fingerprint(teacher)},
                      labels=labels, logits=logits, overwrite=overwrite)
