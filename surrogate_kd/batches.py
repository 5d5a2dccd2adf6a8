"""The batch streams a training run draws from, built from a typed description of its data (config.DataConfig).

Every stream serves `batch(step)` as a pure function of (seed, step): a resumed run sees the same
batches as an uninterrupted one, and every rank of a data-parallel run computes the same global
batch and keeps its own rows (parallel.py). `make_batches` is the one constructor:

  fixed set        ArrayBatches over the candidates, teacher-balanced (D_K) when per_class is set,
                   with boundary samples added before the final balancing if asked for; PoolBatches
                   when the set is too large for memory and lives in a pool on disk
  every epoch      EpochBoundaryBatches: the selected set plus boundary samples drawn afresh each epoch
  stream           SourceBatches (fresh images every step), or OnlineBalancedBatches (fresh images,
                   teacher-balanced on the fly) when per_class is set
"""

import hashlib
import json
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from . import parallel
from .adapt import adapted_params
from .boundary import add_boundary_samples, boundary_sample_parts, merge_summaries
from .config import DataConfig
from .data import CACHE_DIR, ImageSet, open_images
from .errors import UserError
from .pool import Pool, write_pool
from .report import rare_classes
from .runtime import epoch_seed, predict
from .select import balanced_indices, class_quotas, indices_for_quotas, write_selection
from .sources import SOURCES, render
from .teacher import (Candidates, class_histogram, is_source, relative_entropy, scan_candidates, source_params_for,
                      teacher_fingerprint)


class Batches(Protocol):
    """Where a training loop's uint8 batches come from; `batch(step)` is a pure function of step,
    which is what makes a resumed run identical to an uninterrupted one, and lets every rank of a
    data-parallel run compute the same global batch and keep its own rows of it (parallel.py)."""

    steps_per_epoch: int

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor | None]: ...

    def report(self) -> dict:
        """What the stream did that belongs in the run's result (e.g. each epoch's boundary attack)."""
        ...


class EpochBatches:
    """Batches drawn per epoch from images (re)built for that epoch: the shared `batch(step)`.

    A subclass implements `_epoch_data(epoch) -> (images, labels or None, order)`, a pure function
    of the epoch; `batch(step)` serves rows order[position*B:(position+1)*B] of the current
    epoch's images and rebuilds them when the step enters a new epoch (only that one is kept).
    """

    batch_size: int
    steps_per_epoch: int
    _epoch: int = -1

    def _epoch_data(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        raise NotImplementedError

    @staticmethod
    def _check_fills_a_batch(images: ImageSet, batch_size: int) -> None:
        """Epochs drop their last partial batch (static shapes): a set must hold one whole batch."""
        if len(images) < batch_size:
            raise UserError(f"image set '{images.name}' has {len(images)} images, fewer than one batch of {batch_size}")

    def batch(self, step: int):
        epoch, position = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            self._images, self._labels, self._order = self._epoch_data(epoch)
            self._epoch = epoch
        index = self._order[position * self.batch_size:(position + 1) * self.batch_size]
        return self._images[index], None if self._labels is None else self._labels[index]

    def report(self) -> dict:
        return {}


class ArrayBatches(EpochBatches):
    """Shuffled epochs over an in-memory image set (drops the last partial batch: static shapes)."""

    def __init__(self, images: ImageSet, batch_size: int, seed: int, device: torch.device):
        self._check_fills_a_batch(images, batch_size)
        self.images = images.images.to(device)  # (N, C, H, W) uint8
        self.labels = None if images.labels is None else images.labels.to(device)
        self.batch_size, self.seed, self.device = batch_size, seed, device
        self.steps_per_epoch = len(images) // batch_size

    def _epoch_data(self, epoch: int):
        g = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
        return self.images, self.labels, torch.randperm(len(self.images), generator=g).to(self.device)


class PoolBatches(ArrayBatches):
    """`ArrayBatches` over a set on disk: the same epochs, each batch read from the pool when served,
    so memory holds the labels and one batch, not the set."""

    def __init__(self, pool: Pool, batch_size: int, seed: int, device: torch.device):
        if len(pool) < batch_size:
            raise UserError(f"pool {pool.path} has {len(pool)} images, fewer than one batch of {batch_size}")
        self.images = _PoolRows(pool, device)
        self.labels = None if pool.labels is None else pool.labels.to(device)
        self.batch_size, self.seed, self.device = batch_size, seed, device
        self.steps_per_epoch = len(pool) // batch_size


class _PoolRows:
    """A pool's images as `EpochBatches.batch` indexes them: `rows[index]` reads those images only."""

    def __init__(self, pool: Pool, device: torch.device):
        self.pool, self.device = pool, device

    def __len__(self) -> int:
        return len(self.pool)

    def __getitem__(self, index: torch.Tensor) -> torch.Tensor:
        return self.pool.gather(index.cpu()).to(self.device)  # (B, C, H, W) uint8


class SourceBatches:
    """Fresh synthetic images every step from a registered source: no pool on disk at all."""

    def __init__(self, source: str, size: int, channels: int, batch_size: int, seed: int,
                 device: torch.device, epoch_size: int, **params):
        self.render = lambda start: render(source, seed, start, batch_size, size, channels, device, **params)
        self.batch_size = batch_size
        self.steps_per_epoch = max(1, epoch_size // batch_size)

    def batch(self, step: int):
        return self.render(step * self.batch_size), None

    def report(self) -> dict:
        return {}


class OnlineBalancedBatches(EpochBatches):
    """Teacher-balanced synthetic batches, selected on the fly: a balanced set never stored.

    Same interface as `SourceBatches`. Each epoch draws fresh images from the source (its
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
        self.drawn: dict[int, torch.Tensor] = {}  # epoch -> the teacher's histogram over its draws

    def _epoch_data(self, epoch: int):
        spec, num_classes = self.teacher.spec, self.teacher.num_classes
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
        quotas = class_quotas(torch.ones(num_classes, dtype=torch.int64), self.epoch_size, generator)
        kept_images, kept_labels = [], []
        filled = torch.zeros(num_classes, dtype=torch.int64)
        drawn = torch.zeros(num_classes, dtype=torch.int64)
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
            drawn += class_histogram(predicted, num_classes)
            if torch.equal(filled, quotas):
                break
        self.drawn[epoch] = drawn
        labels = torch.cat(kept_labels)
        # Fill what the draw budget left short: replicate rare classes, move absent ones' shares.
        order = indices_for_quotas(labels, class_quotas(filled, self.epoch_size, generator), generator)
        return torch.cat(kept_images), labels.to(self.device), order.to(self.device)

    def report(self) -> dict:
        """What the teacher made of the fresh images this run drew (before balancing), as a fixed
        set reports its candidates: a resumed run reports the epochs it drew itself."""
        if not self.drawn:
            return {}
        histogram = torch.stack(list(self.drawn.values())).sum(0)
        counts = [int(c) for c in histogram]
        return {"stream": {"epochs_drawn": len(self.drawn), "draws": sum(counts),
                           "draws_per_kept_image": round(sum(counts) / (len(self.drawn) * self.epoch_size), 3)},
                "relative_entropy": relative_entropy(histogram), "class_histogram": counts,
                "rare_classes": rare_classes(counts, list(self.teacher.spec.classes))}


class EpochBoundaryBatches(EpochBatches):
    """Batches of a labelled set plus boundary samples recomputed every epoch (the "each epoch" option).

    Same interface as `ArrayBatches`. At the start of epoch e a fresh random `fraction` of
    the set (seeded by (seed, e)) is attacked and its samples join the set for that epoch; an
    epoch stays len(set) // batch_size batches (static shapes, a fixed step count), drawn without
    replacement from the set and the epoch's samples together, so the samples take their share
    of each epoch. `batch(step)` depends only on (seed, step): a resumed run recomputes the
    epoch it stopped in and sees the same batches. `summaries` keeps each epoch's attack summary.
    """

    def __init__(self, teacher: torch.nn.Module, image_set: ImageSet, batch_size: int, seed: int,
                 device: torch.device, fraction: float, **attack):
        if image_set.labels is None:
            raise UserError("boundary samples every epoch need a labelled set (the teacher's argmax)")
        self._check_fills_a_batch(image_set, batch_size)
        if not 0 < fraction <= 1:
            raise UserError(f"fraction must be in (0, 1], got {fraction}")
        self.teacher, self.set, self.seed, self.device = teacher, image_set, seed, device
        self.fraction, self.attack, self.batch_size = fraction, attack, batch_size
        self.steps_per_epoch = len(image_set) // batch_size
        self.summaries: dict[int, dict] = {}

    def _epoch_data(self, epoch: int):
        seed = epoch_seed(self.seed, epoch)
        extended, summary = add_boundary_samples(self.teacher, self.set, self.fraction, seed=seed,
                                                 labels=self.set.labels, device=self.device, **self.attack)
        self.summaries[epoch] = summary
        order = torch.randperm(len(extended), generator=torch.Generator().manual_seed(seed))
        return (extended.images.to(self.device), extended.labels.to(self.device),
                order[:self.steps_per_epoch * self.batch_size].to(self.device))

    def report(self) -> dict:
        """What each epoch's attack did."""
        return {"boundary_epochs": {epoch: {k: summary[k] for k in ("samples", "success_rate", "relative_entropy_after")}
                                    for epoch, summary in sorted(self.summaries.items())}}


# --------------------------------------------------------------------------- from a description of the data

# A distillation set larger than this is written to a pool on disk and read batch by batch; below
# it, it is held in memory (e.g. 1,000 classes x 50 images at 64 px RGB: 614 MB, in memory). Boundary
# samples too: attacked in parts whose images and samples fit in it, and written to disk when all of
# them would not (e.g. 25,000 images attacked at 224 px RGB: up to 15 GB of samples).
MAX_IN_MEMORY_BYTES = 1 << 30
SAMPLES_PER_ATTACK = 4  # a kept pair and its two deeper copies (boundary.ROLES)


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
        return ImageSet(chosen.take(index), labels[index], spec.classes, candidates.name), info


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
    pool in `scratch` when up to SAMPLES_PER_ATTACK per attacked image would not fit), labels and summary.

    In memory the whole share is attacked at once; on disk in parts of what memory holds, each
    part's samples written before the next part is attacked."""
    spec = teacher.spec
    image_bytes = spec.channels * spec.size ** 2
    attacked = max(1, round(boundary.fraction * len(predictions)))
    per_part = MAX_IN_MEMORY_BYTES // ((1 + SAMPLES_PER_ATTACK) * image_bytes)  # attacked images and their samples
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
            images[is_sample] = self.samples[rows] if isinstance(self.samples, torch.Tensor) else self.samples.gather(rows)
        return images

    chunks = Candidates.chunks  # the same chunking over these positions (it only calls len and take)


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
        write_selection(teacher, chosen, index, labels[index], path, manifest, device, overwrite=True)
    return Pool(path), info


def make_batches(teacher, data: DataConfig, batch_size: int, seed: int, device: torch.device,
                 download: bool = False, store: Path | None = None) -> tuple[Batches, dict]:
    """The batch stream a distillation run trains on, and what the teacher made of its data
    (`store`: where a set too large for memory is written, see `build_distillation_set`)."""
    spec = teacher.spec
    if data.adapt:  # the programs steered by the teacher: every image below is rendered with the proposal
        params, about = adapted_params(teacher, dict(data.source_params), seed, device)
        batches, info = make_batches(teacher, replace(data, source_params=tuple(params.items()), adapt=False),
                                     batch_size, seed, device, download, store)
        return batches, {"adapt": about, **info}
    if data.stream:
        if not is_source(data.data):
            raise UserError(f"--stream needs an image source ({', '.join(SOURCES.names())}), got '{data.data}'")
        params = source_params_for(data.data, spec, dict(data.source_params))
        if data.per_class:  # the same per-class quota as D_K, applied on the fly to fresh images
            return OnlineBalancedBatches(teacher, data.data, batch_size, seed, device,
                                         epoch_size=data.per_class * len(spec.classes), **params), {}
        return SourceBatches(data.data, spec.size, spec.channels, batch_size, seed, device,
                             epoch_size=data.candidates, **params), {}
    if download and not is_source(data.data):
        open_images(data.data, download=True)
    every_epoch = data.boundary is not None and data.boundary.every_epoch
    images, info = build_distillation_set(teacher, data, seed, device, download, with_boundary=not every_epoch,
                                          store=store)
    if isinstance(images, Pool):
        return PoolBatches(images, batch_size, seed, device), info
    if every_epoch:
        return EpochBoundaryBatches(teacher, images, batch_size, seed, device, data.boundary.fraction,
                                    **data.boundary.attack()), info
    return ArrayBatches(images, batch_size, seed, device), info
