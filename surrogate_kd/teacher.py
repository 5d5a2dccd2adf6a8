"""What a teacher makes of images: its identity, its logits (cached beside pools), its class histogram.

Selection (select.py), the batch streams (batches.py), boundary samples and the score all ask the
teacher through this module:
  load_teacher         a checkpoint (directory, sidecar or weights file) or a loaded model -> the model
  teacher_fingerprint  a hash of its architecture, input spec and weights (a black box's: its file's
                       SHA-256): what identifies a run's teacher
  class_histogram, relative_entropy   how evenly its predictions cover the classes (paper Table 3)
  Candidates           candidate images from a source or a set, in its input spec, fetched by position
  scan_candidates      pass 1 of a selection: the teacher's top-1 class (and max softmax) per candidate,
                       a chunk at a time; a pool's scan is cached beside it
  load_candidates      candidates and their (N, K) logits in memory (the score, explanations);
                       a pool's logits are computed once and cached beside it
"""

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .checkpoint import load_model
from .files import atomic_write, atomic_write_text
from .data import ImageSet, convert_images, open_images
from .errors import UserError
from .pool import Pool
from .runtime import predict
from .sources import SOURCES, render, render_at


def load_teacher(teacher):
    """A teacher given as a checkpoint path, or already loaded."""
    return teacher if isinstance(teacher, torch.nn.Module) else load_model(teacher)


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
    return float(-(p * p.log()).sum() / math.log(counts.numel())) + 0.0  # + 0.0: one class gives 0, not -0



def teacher_fingerprint(teacher) -> str:
    """A hash of the teacher's architecture, input spec and every weight and buffer.

    A black box (foreign.BlackBoxClassifier: TorchScript, ONNX) is identified by its file's SHA-256,
    checked against its sidecar when it was loaded: an ONNX session exposes no weights to hash.
    """
    digest = hashlib.sha256(json.dumps([teacher.arch, repr(teacher.spec)]).encode())
    file_sha256 = getattr(teacher, "file_sha256", None)
    if file_sha256 is not None:
        digest.update(file_sha256.encode())
        return digest.hexdigest()[:16]
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
    """(count, K) logits of the whole pool: stored by `select`, cached, or computed and cached."""
    pool = Pool(path)
    if pool.logits is not None and pool.manifest.get("teacher_fingerprint") == teacher_fingerprint(teacher):
        return pool.logits  # written with the pool by `select`: cannot be stale

    def compute() -> np.ndarray:
        nonlocal images
        if images is None or len(images) != len(pool):
            images = open_images(str(path), teacher.spec.size, teacher.spec.channels).images
        progress = f"teacher on {path.name}"
        return predict(teacher, images, batch_size=batch_size, device=device, progress=progress).numpy()

    return torch.from_numpy(_beside_pool(path, teacher, "teacher-logits", (len(pool), teacher.num_classes), compute))


def _beside_pool(path: Path, teacher, name: str, shape: tuple, compute) -> np.ndarray:
    """What `compute()` returns for this pool and teacher, cached as `<name>-<teacher>.npy` + `.json` in the pool.

    The JSON records the pool's and the teacher's fingerprints and is written last, so a cache
    whose pool or teacher changed (or whose write was interrupted) is recomputed, never reused.
    """
    fingerprint = teacher_fingerprint(teacher)
    array_file, record_file = path / f"{name}-{fingerprint}.npy", path / f"{name}-{fingerprint}.json"
    record = {"teacher": fingerprint, "pool": pool_fingerprint(path), "shape": list(shape)}
    try:
        if json.loads(record_file.read_text()) == record:
            array = np.load(array_file)
            if list(array.shape) == record["shape"]:
                return array
    except (OSError, ValueError):
        pass  # no cache yet, or a damaged one: recompute
    array = compute()
    try:
        atomic_write(array_file, lambda tmp: _save_array(tmp, array))
        atomic_write_text(record_file, json.dumps(record, indent=1))
    except OSError:
        pass  # a read-only pool: the result is still right, only not cached
    return array


def _save_array(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object: np.save would add ".npy" to a temporary name
        np.save(f, array)


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
    return data in SOURCES


def source_params_for(source: str, spec, params: dict | None = None) -> dict:
    """A source's parameters; noise defaults to the teacher's input statistics."""
    params = dict(params or {})
    if source == "noise":
        params.setdefault("mean", spec.mean)
        params.setdefault("std", spec.std)
    return params


# --------------------------------------------------------------------------- candidates, by position

CHUNK_BYTES = 64 << 20  # uint8 candidate images held at once while scanning or fetching (64 MiB)


def chunk_images(spec) -> int:
    """How many candidate images of this input spec make one chunk: 5,461 at 64 px RGB, 445 at 224 px."""
    return max(1, CHUNK_BYTES // (spec.channels * spec.size * spec.size))


class Candidates:
    """The candidate images of a source or a set, in the teacher's input spec, fetched by position.

    Position i is image i of a synthetic source (its first `count`), or row subset[i] of a stored
    set (a seeded random `count` of it when it has more; count 0 keeps all). Images are made only
    when asked for: a source renders them (image i is a pure function of (seed, i)), a pool is read
    from disk; only other sets (.npz, image folders, named datasets) are held in memory, as read.
    """

    def __init__(self, spec, data: str, count: int, seed: int, download: bool = False,
                 source_params: dict | None = None):
        self.spec, self.data, self.seed, self.name = spec, data, seed, data
        self.subset: torch.Tensor | None = None  # (count,) rows of the stored set, None: all, in order
        self.pool: Pool | None = None  # the pool read from, when `data` is one
        self._images: torch.Tensor | None = None  # (M, C, H, W) uint8, a stored set that is not a pool
        self.labels, self.classes = None, None  # a stored set's own labels (M,) and class names, if any
        if is_source(data):
            if not count or count <= 0:
                raise UserError(f"a synthetic source needs a positive candidate count, got {count}")
            self.params = source_params_for(data, spec, source_params)
            render(data, seed, 0, 0, spec.size, spec.channels, "cpu", **self.params)  # bad parameters fail now
            self.count = count
            return
        if is_pool(data):
            self.pool, self.name = Pool(data), Path(data).name
            self.labels, self.classes = self.pool.labels, tuple(self.pool.manifest.get("classes") or ()) or None
            stored = len(self.pool)
        else:
            image_set = open_images(data, spec.size, spec.channels, download=download)
            self._images, self.name, stored = image_set.images, image_set.name, len(image_set)
            self.labels, self.classes = image_set.labels, image_set.classes
        if count and stored > count:
            self.subset = torch.randperm(stored, generator=torch.Generator().manual_seed(seed))[:count]
        self.count = stored if self.subset is None else count

    def __len__(self) -> int:
        return self.count

    def fingerprint(self) -> dict | None:
        """What identifies the images beyond (data, count, seed): a pool's fingerprint, a file's size and
        mtime (a folder's own mtime: files added or removed); None for a source or a named dataset."""
        if self.pool is not None:
            return pool_fingerprint(self.pool.path)
        path = Path(self.data)
        return {"size": path.stat().st_size, "mtime_ns": path.stat().st_mtime_ns} if path.exists() else None

    def take(self, positions: torch.Tensor) -> torch.Tensor:
        """uint8 (n, C, H, W) of the candidates at positions (n,), in that order (repeats allowed)."""
        positions = torch.as_tensor(positions, dtype=torch.int64)
        if self.pool is None and self._images is None:
            return _render_at(self.data, self.seed, positions, self.spec, self.params)
        rows = positions if self.subset is None else self.subset[positions]
        if self._images is not None:
            return self._images[rows]
        return convert_images(self.pool.gather(rows), self.spec.size, self.spec.channels)

    def chunks(self, positions: torch.Tensor | None = None):
        """(positions, images) a chunk at a time: of `positions` (n,), or of every candidate in order."""
        step = chunk_images(self.spec)
        total = len(self) if positions is None else len(positions)
        for start in range(0, total, step):
            part = (torch.arange(start, min(start + step, total)) if positions is None
                    else positions[start:start + step])
            yield part, self.take(part)


def _render_at(source: str, seed: int, positions: torch.Tensor, spec, params: dict) -> torch.Tensor:
    """Source images at any positions, each distinct one rendered once (a balanced selection repeats
    a rare class's images many times) in one `render_at` pass: 10x faster than rendering the
    selection's runs of consecutive positions one call each (measured, shaders and leaves at 28 px)."""
    unique, inverse = torch.unique(positions, return_inverse=True)
    images = render_at(source, seed, unique, spec.size, spec.channels, "cpu", **params)
    return images if len(unique) == len(positions) and torch.equal(unique, positions) else images[inverse]


# --------------------------------------------------------------------------- pass 1: what the teacher predicts

# What a scan keeps per candidate: a few bytes, never the (N, K) logits nor the images.
SCAN_DTYPE = np.dtype([("predicted", "<i4"), ("max_softmax", "<f4")])


def scan_candidates(teacher, candidates: Candidates, device: torch.device | None = None,
                    batch_size: int = 256) -> np.ndarray:
    """The teacher's top-1 class and max softmax for every candidate, (N,) of SCAN_DTYPE.

    Candidates are made one chunk at a time (`chunk_images`) and go through the teacher
    `batch_size` at a time, so memory holds one chunk of images and one batch's logits, whatever N.
    (256, not predict's 1,024: as fast on CPU, 27.7 s against 26.7 s for 8,000 candidates at 64 px,
    and a quarter of the activations: peak RSS 795 MB against 1,226 MB there.) A whole pool's scan
    is cached beside it, like its logits (a pool written by `select` for this teacher carries its
    logits: no teacher pass at all).
    """
    pool = candidates.pool
    if pool is None:
        return _scan(teacher, candidates, device, batch_size)
    if pool.logits is not None and pool.manifest.get("teacher_fingerprint") == teacher_fingerprint(teacher):
        scan = _scan_of_logits(pool.logits)
    else:
        whole = Candidates(candidates.spec, candidates.data, 0, candidates.seed)
        scan = _beside_pool(pool.path, teacher, "teacher-scan", (len(pool),),
                            lambda: _scan(teacher, whole, device, batch_size))
    return scan if candidates.subset is None else scan[candidates.subset.numpy()]


def _scan(teacher, candidates: Candidates, device, batch_size: int) -> np.ndarray:
    scan = np.empty(len(candidates), SCAN_DTYPE)
    for positions, images in tqdm(candidates.chunks(), desc=f"teacher on {candidates.name}", leave=False,
                                  total=-(-len(candidates) // chunk_images(candidates.spec)), disable=None):
        # Batch by batch, not the chunk's (chunk, K) logits at once: tens of MB per chunk at 1,000
        # classes, which fragmented the heap enough to grow peak RSS with the number of chunks.
        for start in range(0, len(images), batch_size):
            logits = predict(teacher, images[start:start + batch_size], batch_size=batch_size, device=device)
            scan[positions[start:start + batch_size].numpy()] = _scan_of_logits(logits)
    return scan


def _scan_of_logits(logits: torch.Tensor) -> np.ndarray:
    """(n, K) logits -> (n,) SCAN_DTYPE."""
    top = logits.float().softmax(1).max(1)
    scan = np.empty(len(logits), SCAN_DTYPE)
    scan["predicted"], scan["max_softmax"] = top.indices.numpy(), top.values.numpy()
    return scan


def load_candidates(teacher, data: str, candidates: int, seed: int, device: torch.device | None = None,
                    download: bool = False, batch_size: int = 1024, source_params: dict | None = None):
    """Candidate images in the teacher's input spec and the teacher's logits for them, all in memory.

    For the score and explanations of a few thousand images; distillation sets are selected in
    chunks (`Candidates`, `scan_candidates`) so that memory does not grow with the candidates.
    `data` and `candidates` as for `Candidates`. Returns (ImageSet, (N, K) logits).
    """
    found = Candidates(teacher.spec, data, candidates, seed, download, source_params)
    images = found.take(torch.arange(len(found)))
    labels = found.labels if found.labels is None or found.subset is None else found.labels[found.subset]
    return (ImageSet(images, labels, found.classes, found.name),
            teacher_logits(teacher, images, data, found.subset, device, batch_size))
