"""Teacher predictions -> class histogram, relative entropy, and teacher-guided distillation sets.

Paper Sect. 3.2, Eq. 1: for every class c_i the teacher predicts, draw N_i images at random from
those predicted as c_i; replicate a class predicted fewer than N_i times up to N_i; skip a class
never predicted and draw its share from the other classes, so the total is kept.

Also here: the teacher's logits over a pool, cached beside it (`teacher_logits`); `select`, which
writes D_K (balanced or long-tail, Table 4) as a pool; the ID/OOD split of a labelled real set by
a class map (Sect. 3.1); and `OnlineBalancedBatches`, the same quotas applied to a synthetic
stream inside the training loop. docs/selection.md describes all of them.
"""

import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np
import torch

from .distill import EpochBatches, predict, resolve_device
from .errors import UserError

DEFAULT_CAP = 50000  # paper Sect. 3.1: at most 50K surrogate images per distillation


# --------------------------------------------------------------------------- histograms and quotas

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


# --------------------------------------------------------------------------- teacher logits, cached beside pools

def teacher_fingerprint(teacher) -> str:
    """A hash of the teacher's architecture, input spec and every weight and buffer."""
    digest = hashlib.sha256(json.dumps([teacher.arch, repr(teacher.spec)]).encode())
    for name, tensor in sorted(teacher.net.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def pool_fingerprint(path: Path) -> dict:
    """What identifies a pool's images: its manifest's hash and each shard's size and mtime.

    Rewriting the pool or any shard in place changes it; reading does not (make-style, no hashing
    of image bytes, so checking is instant even for large pools).
    """
    manifest = (path / "manifest.json").read_bytes()
    shards = [entry["file"] for entry in json.loads(manifest)["shards"]]
    stats = {name: [(path / name).stat().st_size, (path / name).stat().st_mtime_ns] for name in shards}
    return {"manifest_sha256": hashlib.sha256(manifest).hexdigest(), "shards": stats}


def is_pool(data: str) -> bool:
    return Path(data).is_dir() and (Path(data) / "manifest.json").exists()


def _pool_logits(teacher, path: Path, images: torch.Tensor | None, device, batch_size: int) -> torch.Tensor:
    """(count, K) logits of the whole pool: stored by `select`, cached, or computed and cached.

    The cache is `teacher-logits-<teacher>.npy` + `.json` in the pool directory; the JSON records
    the pool's and the teacher's fingerprints and is written last, so a cache whose pool or
    teacher changed (or whose write was interrupted) is recomputed, never reused.
    """
    from .checkpoint import atomic_write_text
    from .data import open_images
    from .pool import Pool

    fingerprint = teacher_fingerprint(teacher)
    pool = Pool(path)
    if pool.logits is not None and pool.manifest.get("teacher_fingerprint") == fingerprint:
        return pool.logits  # written with the pool by `select`: cannot be stale
    array_file, record_file = path / f"teacher-logits-{fingerprint}.npy", path / f"teacher-logits-{fingerprint}.json"
    record = {"teacher": fingerprint, "pool": pool_fingerprint(path), "shape": [len(pool), teacher.num_classes]}
    try:
        if json.loads(record_file.read_text()) == record:
            logits = torch.from_numpy(np.load(array_file))
            if list(logits.shape) == record["shape"]:
                return logits
    except (OSError, ValueError):
        pass  # no cache yet, or a damaged one: recompute
    if images is None or len(images) != len(pool):
        images = open_images(str(path), teacher.spec.size, teacher.spec.channels).images
    logits = predict(teacher, images, batch_size=batch_size, device=device, progress=f"teacher on {path.name}")
    try:
        tmp = array_file.with_name(array_file.name + ".tmp.npy")
        np.save(tmp, logits.numpy())
        os.replace(tmp, array_file)
        atomic_write_text(record_file, json.dumps(record, indent=1))
    except OSError:
        pass  # a read-only pool: the logits are still right, only not cached
    return logits


def teacher_logits(teacher, images: torch.Tensor, data: str | None = None, subset: torch.Tensor | None = None,
                   device: torch.device | None = None, batch_size: int = 1024) -> torch.Tensor:
    """Teacher logits (N, K) float32 on the CPU for uint8 images (N, C, H, W) in its input spec.

    When `data` names a pool, `images` are that pool's images (rows `subset` of it, if given) and
    the logits come from the cache beside the pool, computed over the whole pool on a miss.
    """
    if data is not None and is_pool(data):
        logits = _pool_logits(teacher, Path(data), images if subset is None else None, device, batch_size)
        return logits if subset is None else logits[subset]
    return predict(teacher, images, batch_size=batch_size, device=device, progress=f"teacher on {data or 'images'}")


def is_source(data: str) -> bool:
    """Whether `data` names a registered synthetic source rather than an image set."""
    from .sources import SOURCES

    return data in SOURCES


def source_params_for(source: str, spec, params: dict | None = None) -> dict:
    """A source's parameters; noise defaults to the teacher's input statistics."""
    params = dict(params or {})
    if source == "noise":
        params.setdefault("mean", spec.mean)
        params.setdefault("std", spec.std)
    return params


def load_candidates(teacher, data: str, candidates: int, seed: int, device: torch.device | None = None,
                    download: bool = False, batch_size: int = 1024, source_params: dict | None = None):
    """Candidate images in the teacher's input spec and the teacher's logits for them.

    `data` is a synthetic source (its first `candidates` images), or any set `open_images` reads
    (a random `candidates` of them when it has more; 0 keeps all). Returns (ImageSet, (N, K) logits).
    """
    from .data import ImageSet, open_images

    spec = teacher.spec
    subset = None
    if is_source(data):
        from .sources import render

        if not candidates or candidates <= 0:
            raise UserError(f"a synthetic source needs a positive candidate count, got {candidates}")
        images = render(data, seed, 0, candidates, spec.size, spec.channels, "cpu",
                        **source_params_for(data, spec, source_params))
        pool = ImageSet(images, None, None, data)
    else:
        pool = open_images(data, spec.size, spec.channels, download=download)
        if candidates and len(pool) > candidates:
            subset = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:candidates]
            pool = ImageSet(pool.images[subset], None if pool.labels is None else pool.labels[subset], pool.classes,
                            pool.name)
    return pool, teacher_logits(teacher, pool.images, data, subset, device, batch_size)


# --------------------------------------------------------------------------- select: D_K as a pool

def load_teacher(teacher):
    from .checkpoint import load_model

    return teacher if isinstance(teacher, torch.nn.Module) else load_model(teacher)


def select(teacher, data: str, out: str | Path, per_class: int, total: int | None = None, long_tail: float | None = None,
           cap: int = DEFAULT_CAP, seed: int = 0, candidates: int = 50000, device: str = "auto", batch_size: int = 1024,
           overwrite: bool = False, download: bool = False) -> dict:
    """Write the teacher-guided set D_K drawn from `data` as a pool at `out` (paper Sect. 3.2).

    `total` images (default per_class x classes, at most `cap`) split evenly over the classes the
    teacher predicts, or with `long_tail=RATIO` decaying geometrically from the most to the least
    predicted class. The pool holds copies of the images, labels = teacher argmax and the
    teacher's logits, so `distill` reads it without asking the teacher again.
    """
    from .pool import write_pool

    if per_class <= 0:
        raise UserError(f"per-class count must be positive, got {per_class}")
    if long_tail is not None and not long_tail >= 1:
        raise UserError(f"long-tail ratio (largest / smallest quota) must be >= 1, got {long_tail}")
    model = load_teacher(teacher)
    num_classes = model.num_classes
    requested = total if total is not None else per_class * num_classes
    if requested <= 0:
        raise UserError(f"total must be positive, got {requested}")
    kept_total = min(requested, cap)
    images, logits = load_candidates(model, data, candidates, seed, resolve_device(device), download, batch_size)
    predictions = logits.argmax(1)
    counts = class_histogram(predictions, num_classes)
    generator = torch.Generator().manual_seed(seed)
    quotas = (long_tail_quotas(counts, kept_total, long_tail) if long_tail is not None
              else class_quotas(counts, kept_total, generator))
    index = indices_for_quotas(predictions, quotas, generator)
    manifest = {"source": "selection", "seed": seed, "classes": list(model.spec.classes),
                "teacher": str(teacher) if not isinstance(teacher, torch.nn.Module) else model.arch,
                "teacher_fingerprint": teacher_fingerprint(model),
                "params": {"data": data, "per_class": per_class, "total": kept_total, "long_tail": long_tail,
                           "cap": cap, "candidates": len(images)}}
    chunk = 4096
    batches = (images.images[index[start:start + chunk]] for start in range(0, len(index), chunk))
    path = write_pool(out, batches, manifest, labels=predictions[index], logits=logits[index], overwrite=overwrite)
    selected = class_histogram(predictions[index], num_classes)
    return {"out": str(path), "data": data, "candidates": len(images), "selected": len(index),
            "capped": requested > cap, "replicated": len(index) - int(index.unique().numel()),
            "relative_entropy_candidates": round(relative_entropy(counts), 4),
            "relative_entropy_selected": round(relative_entropy(selected), 4),
            "class_histogram_candidates": counts.tolist(), "class_histogram_selected": selected.tolist()}


# --------------------------------------------------------------------------- in-domain / out-of-domain split

def _read_mapping(class_map) -> dict:
    if isinstance(class_map, dict):
        return class_map
    path = Path(class_map)
    try:
        text = path.read_text()
    except OSError as e:
        raise UserError(f"cannot read class map {path}: {e.strerror}") from None
    import yaml

    try:
        mapping = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as e:
        raise UserError(f"class map {path} is not valid YAML/JSON: {str(e).splitlines()[0]}") from None
    if not isinstance(mapping, dict):
        raise UserError(f"class map {path} must map each teacher class to a list of dataset labels")
    return mapping


def split_by_class_map(dataset, class_map, teacher_classes, complete_only: bool = True):
    """Split a labelled real set into in-domain (ID) and out-of-domain (OOD) subsets (paper Sect. 3.1).

    `class_map` (a YAML/JSON file or a dict) maps every teacher class (name or index) to the list
    of dataset labels (names or ids) that show it, `[]` for none. ID: images whose label is
    mapped, relabelled with the teacher's class; OOD: all the others, with their own labels.
    When some teacher class has no counterpart the overlap is incomplete and, as in the paper,
    no ID subset is made (None) unless `complete_only=False`.
    """
    from .data import ImageSet, open_images

    teacher_classes = list(getattr(getattr(teacher_classes, "spec", None), "classes", teacher_classes))
    mapping = _read_mapping(class_map)
    if len(mapping) != len(teacher_classes):
        raise UserError(f"the class map lists {len(mapping)} teacher classes but the teacher has "
                        f"{len(teacher_classes)}; map every teacher class (use [] for none)")
    images = open_images(dataset) if isinstance(dataset, str) else dataset
    if images.labels is None:
        raise UserError(f"'{images.name}' has no labels to split by")
    dataset_classes = list(images.classes or [])

    def teacher_id(key) -> int:
        if str(key) in teacher_classes:  # a name first: class names may be digits
            return teacher_classes.index(str(key))
        if str(key).isdigit() and int(key) < len(teacher_classes):
            return int(key)
        raise UserError(f"class map: '{key}' is not a teacher class (classes: {', '.join(teacher_classes)})")

    def label_id(value) -> int:
        if isinstance(value, int):
            return value
        if value in dataset_classes:
            return dataset_classes.index(value)
        raise UserError(f"class map: '{value}' is not a class of '{images.name}'")

    to_teacher = torch.full((int(images.labels.max()) + 1,), -1, dtype=torch.int64)  # dataset label -> teacher class
    covered = set()
    for key, values in mapping.items():
        t = teacher_id(key)
        for value in values or []:
            label = label_id(value)
            if label < len(to_teacher):
                to_teacher[label] = t
                covered.add(t)
    teacher_of = to_teacher[images.labels]  # (N,) teacher class or -1
    in_domain = teacher_of >= 0
    ood = ImageSet(images.images[~in_domain], images.labels[~in_domain], images.classes, f"{images.name}:ood")
    if complete_only and len(covered) < len(teacher_classes):
        return None, ood
    id_set = ImageSet(images.images[in_domain], teacher_of[in_domain], tuple(teacher_classes), f"{images.name}:id")
    return id_set, ood


# --------------------------------------------------------------------------- online balancing

class OnlineBalancedBatches(EpochBatches):
    """Teacher-balanced synthetic batches, selected on the fly: a balanced set never stored.

    Same interface as `distill.SourceBatches`. Each epoch draws fresh images from the source (its
    own counter range: epoch e uses images e*max_draws onwards), asks the teacher, and keeps an
    image while its predicted class is under quota (epoch_size split by `class_quotas`), until
    every quota is filled or `max_draws` images were drawn. Short classes are then replicated and
    missing ones' shares given to the others, exactly as D_K does. `batch(step)` depends only on
    (seed, step), so a resumed run sees the same batches; one epoch's selection is kept in memory.
    """

    def __init__(self, teacher, source: str, batch_size: int, seed: int, device: torch.device, epoch_size: int,
                 max_draws: int | None = None, chunk: int = 1024, **params):
        if epoch_size < batch_size:
            raise UserError(f"an epoch of {epoch_size} images is shorter than one batch of {batch_size}")
        self.teacher, self.source, self.seed, self.device = teacher, source, seed, torch.device(device)
        self.params = source_params_for(source, teacher.spec, params)
        self.batch_size, self.epoch_size, self.chunk = batch_size, epoch_size, chunk
        self.max_draws = max_draws or 20 * epoch_size
        self.steps_per_epoch = epoch_size // batch_size

    def _epoch_data(self, epoch: int):
        from .sources import render

        spec, num_classes = self.teacher.spec, self.teacher.num_classes
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        quotas = class_quotas(torch.ones(num_classes, dtype=torch.int64), self.epoch_size, generator)
        kept_images, kept_labels = [], []
        filled = torch.zeros(num_classes, dtype=torch.int64)
        first = epoch * self.max_draws
        for start in range(first, first + self.max_draws, self.chunk):
            images = render(self.source, self.seed, start, self.chunk, spec.size, spec.channels, self.device,
                            **self.params)  # (chunk, C, H, W) uint8
            predicted = predict(self.teacher, images, batch_size=self.chunk, device=self.device).argmax(1)
            # Rank of each image among this chunk's images of its class: keep those still under quota.
            one_hot = torch.nn.functional.one_hot(predicted, num_classes)
            rank = (one_hot.cumsum(0) * one_hot).sum(1) - 1 + filled[predicted]
            keep = rank < quotas[predicted]
            kept_images.append(images[keep.to(images.device)])
            kept_labels.append(predicted[keep])
            filled += class_histogram(predicted[keep], num_classes)
            if torch.equal(filled, quotas):
                break
        labels = torch.cat(kept_labels)
        # Fill what the draw budget left short: replicate rare classes, move absent ones' shares.
        order = indices_for_quotas(labels, class_quotas(filled, self.epoch_size, generator), generator)
        return torch.cat(kept_images), labels.to(self.device), order.to(self.device)
