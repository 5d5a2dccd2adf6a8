"""Teacher-guided distillation sets: the quotas of the paper's D_K, `select`, which writes one as a
pool, `build_distillation_set`, which chooses the fixed set a `distill` run trains on, and
`write_with_boundary_samples`, the `boundary` command's pool (a set plus its boundary samples).

Paper Sect. 3.2, Eq. 1: for every class c_i the teacher predicts, draw N_i images at random from
those predicted as c_i; replicate a class predicted fewer than N_i times up to N_i; skip a class
never predicted and draw its share from the other classes, so the total is kept.
docs/selection.md describes the quotas, the long-tail variant (Table 4), the two passes over the
candidates, where a set and its boundary samples live (memory or disk) and the online stream.
"""

import hashlib
import json
import tempfile
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from . import parallel
from .adapt import adapted_params, should_adapt
from .boundary import boundary_sample_parts, merge_summaries
from .config import DataConfig
from .data import CACHE_DIR, ImageSet
from .errors import UserError
from .pool import Pool, write_pool
from .recipe import CANDIDATES
from .refine import chosen_refiner
from .report import rare_classes
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
           cap: int = DEFAULT_CAP, seed: int = 0, candidates: int = CANDIDATES, device: str = "auto",
           batch_size: int = 1024, overwrite: bool = False, download: bool = False, adapt: bool | None = None) -> dict:
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
    if should_adapt(data, num_classes, adapt):
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
                    overwrite: bool = False, transform=None) -> Path:
    """Pass 2 of a selection: the candidates at `index` (S,), written as a pool with their labels
    (S,) and the teacher's logits (S, K), a chunk at a time (only the logits are held whole).
    `transform(positions, images, labels) -> images` changes each chunk before it is written.

    The logits are those of the images as written, so `distill`, `score` and `select` read them
    from the pool instead of asking the teacher again (teacher.teacher_logits).
    """
    logits = torch.empty(len(index), teacher.num_classes)  # (S, K), filled as the chunks are written

    def chunks():
        done = 0
        for positions, images in candidates.chunks(index):
            if transform is not None:
                images = transform(positions, images, labels[done:done + len(images)])
            logits[done:done + len(images)] = predict(teacher, images, batch_size=batch_size, device=device)
            done += len(images)
            yield images

    # write_pool saves `logits` after the last image batch: by then every row is filled.
    return write_pool(out, chunks(), {**manifest, "teacher_fingerprint": teacher_fingerprint(teacher)},
                      labels=labels, logits=logits, overwrite=overwrite)


# --------------------------------------------------------------------------- the set a distillation run trains on

# A distillation set larger than this is written to a pool on disk and read batch by batch; below
# it, it is held in memory (e.g. 1,000 classes x 50 images at 64 px RGB: 614 MB, in memory). Boundary
# samples too: attacked in parts whose images and samples fit in it, and written to disk when all of
# them would not (e.g. 25,000 images attacked at 224 px RGB: up to 15 GB of samples).
MAX_IN_MEMORY_BYTES = 1 << 30


def held_in_memory(spec, selected: int) -> bool:
    """Whether a distillation set of `selected` images in the teacher's input spec is held in
    memory (else it is written to a pool on disk and read batch by batch)."""
    return selected * spec.channels * spec.size ** 2 <= MAX_IN_MEMORY_BYTES


def build_distillation_set(teacher, data: DataConfig, seed: int, device: torch.device, download: bool = False,
                           with_boundary: bool = True, store: Path | None = None) -> tuple[ImageSet | Pool, dict]:
    """Surrogate images in the teacher's input spec, teacher-balanced when `data.per_class` is set.

    In two passes whose memory does not grow with the candidates (docs/selection.md): pass 1 runs
    the teacher over the candidates a chunk at a time and keeps each one's top-1 class; the
    selection (`balanced_indices`) picks positions; pass 2 fetches only the chosen images (sources
    re-render them, pools are read from disk). A set of more than MAX_IN_MEMORY_BYTES is written
    as a pool at `store` (default: keyed by teacher and data under the cache directory, so a
    resumed or repeated run reuses it without a teacher pass) and returned as that Pool.

    Boundary samples (unless every_epoch) are made from a random `fraction` of the candidates,
    fetched by position, and join them before selection, so that least-predicted targets fill the
    classes the candidates lack with new images rather than with copies (the paper's "force these
    properties"). Returns the set and what the teacher made of the candidates.
    """
    spec = teacher.spec
    candidates = Candidates(spec, data.data, data.candidates, seed, download, dict(data.source_params))
    selected = data.per_class * len(spec.classes) if data.per_class else len(candidates)  # balanced_indices' total
    boundary = data.boundary if with_boundary else None
    if not held_in_memory(spec, selected):
        if data.boundary and data.boundary.every_epoch:
            raise UserError(f"boundary samples every epoch need the distillation set in memory; {selected} images "
                            f"at {spec.size} px are over {MAX_IN_MEMORY_BYTES >> 20} MiB: lower per_class")
        with parallel.local_main_first():  # one process per machine writes it; the others then reuse it
            return _stored_selection(teacher, candidates, data, seed, device, store)
    with _scratch(CACHE_DIR if boundary else None) as scratch:
        info, chosen, labels, index = _selection(teacher, candidates, data.per_class, boundary, seed, device, scratch)
        images = chosen.take(index)
        if data.refine is not None:
            refined = chosen_refiner(teacher, data.refine, len(candidates), seed, device, info)
            images = refined(index, images, labels[index])
        return ImageSet(images, labels[index], spec.classes, candidates.name), info


@contextmanager
def _scratch(parent: Path | None):
    """A directory under `parent` for boundary samples too many for memory, deleted on the way out."""
    if parent is None:
        yield None
        return
    Path(parent).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".boundary-samples-", dir=parent) as path:
        yield Path(path)


def _selection(teacher, candidates: Candidates, per_class: int | None, boundary, seed: int, device: torch.device,
               scratch: Path | None) -> tuple[dict, "Candidates | _WithSamples", torch.Tensor, torch.Tensor]:
    """Pass 1, boundary samples if asked for, and the selection: what the teacher made of the
    candidates, what the set is chosen from (the candidates, then the samples), the teacher's top-1
    class of each (N,), and the chosen positions (S,) (all of them without per_class)."""
    classes = list(teacher.spec.classes)
    scan = scan_candidates(teacher, candidates, device)
    predictions = torch.from_numpy(scan["predicted"]).long()
    counts = class_histogram(predictions, len(classes))
    info = {"candidates": len(candidates), "relative_entropy": round(relative_entropy(counts), 4),
            "class_histogram": counts.tolist(), "rare_classes": rare_classes(counts.tolist(), classes),
            "mean_max_softmax": round(float(scan["max_softmax"].mean(dtype=np.float64)), 4)}
    chosen, labels = candidates, predictions
    if boundary is not None:
        samples, sample_labels, info["boundary"] = _boundary_samples(teacher, candidates, predictions, boundary,
                                                                      seed, device, scratch)
        chosen, labels = _WithSamples(candidates, samples), torch.cat([predictions, sample_labels])
        info["relative_entropy_with_boundary"] = round(relative_entropy(class_histogram(labels, len(classes))), 4)
    if not per_class:
        return info, chosen, labels, torch.arange(len(labels))
    index = balanced_indices(labels, len(classes), per_class, seed=seed)
    info["selected"] = len(index)
    return info, chosen, labels, index


def _boundary_samples(teacher, candidates: Candidates, predictions: torch.Tensor, boundary, seed: int,
                      device: torch.device, scratch: Path) -> tuple["torch.Tensor | Pool", torch.Tensor, dict]:
    """Boundary samples from `boundary.fraction` of the candidates: their images (in memory, or a
    pool in `scratch` when the attacked images and up to `boundary.samples_per_pair` samples each
    would not fit), labels and summary.

    In memory the whole share is attacked at once; on disk in parts of what memory holds, each
    part's samples written before the next part is attacked."""
    spec = teacher.spec
    image_bytes = spec.channels * spec.size ** 2
    attacked = max(1, round(boundary.fraction * len(predictions)))
    per_part = MAX_IN_MEMORY_BYTES // ((1 + boundary.samples_per_pair) * image_bytes)  # attacked images, their samples
    in_memory = attacked <= per_part
    parts = boundary_sample_parts(teacher, candidates.take, predictions, boundary.fraction, seed=seed,
                                  part_size=None if in_memory else max(1, per_part), device=device,
                                  **boundary.attack())
    results = []

    def images():
        for result in parts:
            results.append(result)
            yield result.images
            result.images = None  # written: only the labels and summary are kept

    if in_memory:
        samples = next(images())  # the one part
    else:
        pool = scratch / "samples"
        write_pool(pool, images(), {"source": "boundary-samples", "seed": seed})
        samples = Pool(pool)
    summary = merge_summaries([r.summary for r in results], boundary.fraction, len(predictions))
    return samples, torch.cat([r.labels for r in results]), summary


class _WithSamples:
    """The candidates followed by their boundary samples: position N + j is sample j (a tensor or a pool)."""

    def __init__(self, candidates: Candidates, samples: "torch.Tensor | Pool"):
        self.candidates, self.samples, self.spec = candidates, samples, candidates.spec

    def __len__(self) -> int:
        return len(self.candidates) + len(self.samples)

    def take(self, positions: torch.Tensor) -> torch.Tensor:
        """uint8 (n, C, H, W) at positions (n,), in that order (repeats allowed)."""
        positions = torch.as_tensor(positions, dtype=torch.int64)
        is_sample = positions >= len(self.candidates)
        spec = self.spec
        images = torch.empty((len(positions), spec.channels, spec.size, spec.size), dtype=torch.uint8)
        if (~is_sample).any():
            images[~is_sample] = self.candidates.take(positions[~is_sample])
        if is_sample.any():
            rows = positions[is_sample] - len(self.candidates)
            in_memory = isinstance(self.samples, torch.Tensor)
            images[is_sample] = self.samples[rows] if in_memory else self.samples.gather(rows)
        return images

    chunks = Candidates.chunks  # the same chunking over these positions (it only calls len and take)


def write_with_boundary_samples(teacher, candidates: Candidates, boundary, seed: int, out: str | Path,
                                manifest: dict, device: torch.device, overwrite: bool = False) -> dict:
    """Write every candidate followed by boundary samples from `boundary.fraction` of them as a pool at
    `out`, labelled with the teacher's argmax and stored with its logits (like `select`'s pools);
    returns the attack's summary. Made as `distill` makes a set's samples: the candidates a chunk at a
    time, the attack in parts whose samples go to a scratch pool beside `out` when they would not fit
    in memory, so a set of any size on disk gets them."""
    predictions = torch.from_numpy(scan_candidates(teacher, candidates, device)["predicted"]).long()
    with _scratch(Path(out).parent) as scratch:
        samples, sample_labels, summary = _boundary_samples(teacher, candidates, predictions, boundary, seed, device,
                                                            scratch)
        everything = _WithSamples(candidates, samples)
        write_selection(teacher, everything, torch.arange(len(everything)), torch.cat([predictions, sample_labels]),
                        out, manifest, device, overwrite=overwrite)
    return summary


def _stored_selection(teacher, candidates: Candidates, data: DataConfig, seed: int, device: torch.device,
                      store: Path | None) -> tuple[Pool, dict]:
    """The set as a pool on disk, with labels and the teacher's logits: reused when the pool at
    `store` was made from the same teacher, data description and seed, else made (both passes,
    boundary samples in between if asked for)."""
    identity = {"teacher": teacher_fingerprint(teacher), "data": asdict(data), "seed": seed,
                "candidates": candidates.fingerprint()}
    key = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]
    path = Path(store) if store is not None else CACHE_DIR / "selections" / key
    try:
        pool = Pool(path)
        if pool.manifest.get("selection_key") == key:
            return pool, pool.manifest["candidates_info"]
    except UserError:
        pass  # nothing there yet, or an unfinished write: make it
    with _scratch(path.parent if data.boundary else None) as scratch:
        info, chosen, labels, index = _selection(teacher, candidates, data.per_class, data.boundary, seed, device,
                                                 scratch)
        manifest = {"source": "selection", "seed": seed, "classes": list(teacher.spec.classes), "selection_key": key,
                    "params": identity, "candidates_info": info}
        transform = chosen_refiner(teacher, data.refine, len(candidates), seed, device, info) if data.refine else None
        write_selection(teacher, chosen, index, labels[index], path, manifest, device, overwrite=True,
                        transform=transform)
    return Pool(path), info
