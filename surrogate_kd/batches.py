"""The batch streams a training run draws from, built from a typed description of its data (config.DataConfig).

Every stream serves `batch(step)` as a pure function of (seed, step): a resumed run sees the same
batches as an uninterrupted one, and every rank of a data-parallel run computes the same global
batch and keeps its own rows (parallel.py). `make_batches` is the one constructor:

  fixed set        ArrayBatches over the set select.build_distillation_set chooses (the candidates,
                   teacher-balanced (D_K) when per_class is set, with boundary samples added before
                   the balancing if asked for); PoolBatches when it is too large for memory and
                   lives in a pool on disk
  every epoch      EpochBoundaryBatches: the selected set plus boundary samples drawn afresh each epoch
  stream           SourceBatches (fresh images every step), or OnlineBalancedBatches (fresh images,
                   teacher-balanced on the fly) when per_class is set
"""

from dataclasses import replace
from pathlib import Path
from typing import Protocol

import torch

from .adapt import adapted_params
from .boundary import add_boundary_samples
from .config import DataConfig
from .data import ImageSet, open_images
from .errors import UserError
from .pool import Pool
from .report import rare_classes
from .runtime import epoch_seed, predict
from .select import build_distillation_set, class_quotas, indices_for_quotas
from .sources import SOURCES, render
from .teacher import class_histogram, is_source, relative_entropy, source_params_for


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
