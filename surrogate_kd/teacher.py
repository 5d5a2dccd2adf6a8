"""What a teacher makes of images: its identity, its logits (cached beside pools), its class histogram.

Selection (select.py), the batch streams (batches.py), boundary samples and the score all ask the
teacher through this module:
  load_teacher         a checkpoint (directory, sidecar or weights file) or a loaded model -> the model
  teacher_fingerprint  a hash of its architecture, input spec and weights (a black box's: its file's
                       SHA-256): what identifies a run's teacher
  class_histogram, relative_entropy   how evenly its predictions cover the classes (paper Table 3)
  load_candidates      candidate images from a source or a set, in its input spec, with its logits;
                       a pool's logits are computed once and cached beside it
"""

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import torch

from .checkpoint import load_model
from .files import atomic_write, atomic_write_text
from .data import ImageSet, open_images
from .errors import UserError
from .pool import Pool
from .runtime import predict
from .sources import SOURCES, render


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
    """(count, K) logits of the whole pool: stored by `select`, cached, or computed and cached.

    The cache is `teacher-logits-<teacher>.npy` + `.json` in the pool directory; the JSON records
    the pool's and the teacher's fingerprints and is written last, so a cache whose pool or
    teacher changed (or whose write was interrupted) is recomputed, never reused.
    """
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
        atomic_write(array_file, lambda tmp: _save_array(tmp, logits.numpy()))
        atomic_write_text(record_file, json.dumps(record, indent=1))
    except OSError:
        pass  # a read-only pool: the logits are still right, only not cached
    return logits


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


def load_candidates(teacher, data: str, candidates: int, seed: int, device: torch.device | None = None,
                    download: bool = False, batch_size: int = 1024, source_params: dict | None = None):
    """Candidate images in the teacher's input spec and the teacher's logits for them.

    `data` is a synthetic source (its first `candidates` images), or any set `open_images` reads
    (a random `candidates` of them when it has more; 0 keeps all). Returns (ImageSet, (N, K) logits).
    """
    spec = teacher.spec
    subset = None
    if is_source(data):
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

