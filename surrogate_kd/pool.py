"""Image pools on disk: uint8 .npy shards + a JSON manifest, readable with plain numpy.

Layout of a pool directory (docs/pool-format.md has the full description):

    manifest.json       format, version, source, params, seed, count, size, channels, shards...
    images-00000.npy    uint8 (n, H, W, C), at most shard_size images per shard
    images-00001.npy    ...
    labels.npy          optional int64 (count,)
    logits.npy          optional float32 (count, K)

A pool is written into a hidden sibling directory and renamed into place once complete, with
the manifest written last: an interrupted or failed write never leaves a directory that looks
like a pool. Shards are streamed batch by batch, so memory stays bounded by one batch.
"""

import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
from torch import Tensor

from .errors import UserError
from .files import claim_directory, umask

FORMAT = "surrogate-kd-pool"
VERSION = 1
MANIFEST = "manifest.json"
_HEADER = {"descr": "|u1", "fortran_order": False}  # uint8, C order: the .npy header's fixed fields


class _ShardWriter:
    """Streams uint8 (B, H, W, C) batches into .npy shards of at most shard_size images."""

    def __init__(self, directory: Path, shard_size: int):
        self.directory, self.shard_size = directory, shard_size
        self.shards: list[dict] = []
        self.image_shape: "tuple[int, int, int] | None" = None  # (H, W, C)
        self._file = None
        self._filled = 0

    def write(self, batch: np.ndarray) -> None:
        if self.image_shape is None:
            self.image_shape = batch.shape[1:]
        elif batch.shape[1:] != self.image_shape:
            raise ValueError(f"batch of images {batch.shape[1:]} in a pool of {self.image_shape} (H, W, C)")
        while len(batch):
            if self._file is None:
                self._open()
            take = min(len(batch), self.shard_size - self._filled)
            self._file.write(np.ascontiguousarray(batch[:take]).tobytes())
            self._filled += take
            batch = batch[take:]
            if self._filled == self.shard_size:
                self._close()

    def finish(self) -> None:
        if self._file is not None:
            self._close()

    def abandon(self) -> None:
        """Close an open shard without finishing it (its directory is about to be deleted)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def _header(self, count: int) -> bytes:
        # numpy pads the header so that axis 0 can grow in place: its length does not depend
        # on count, which lets the real count overwrite a placeholder once the shard is full.
        buffer = io.BytesIO()
        np.lib.format.write_array_header_1_0(buffer, {**_HEADER, "shape": (count, *self.image_shape)})
        return buffer.getvalue()

    def _open(self) -> None:
        name = f"images-{len(self.shards):05d}.npy"
        self.shards.append({"file": name, "count": 0})
        self._file = open(self.directory / name, "wb")
        self._placeholder = self._header(0)
        self._file.write(self._placeholder)
        self._filled = 0

    def _close(self) -> None:
        header = self._header(self._filled)
        if len(header) != len(self._placeholder):  # would shift the data: never expected
            raise RuntimeError("numpy .npy header length changed with the image count")
        self._file.seek(0)
        self._file.write(header)
        self._file.close()
        self._file = None
        self.shards[-1]["count"] = self._filled


def claim_output(out: Path, overwrite: bool) -> None:
    """UserError unless `out` may become a pool: absent, empty, or a pool we may replace."""
    claim_directory(out, MANIFEST, "pool", overwrite)


def _move_into_place(staging: Path, out: Path) -> None:
    """Rename the finished staging directory to `out`, replacing an old pool there."""
    if out.is_dir() and any(out.iterdir()):
        retired = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, retired / "pool")
        os.replace(staging, out)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(staging, out)  # onto an empty directory, or none


def write_pool(
    out_dir: "str | Path",
    batches: Iterable[Tensor],
    manifest: dict,
    shard_size: int = 65536,
    labels: "Tensor | None" = None,
    logits: "Tensor | None" = None,
    overwrite: bool = False,
) -> Path:
    """Write uint8 (B, C, H, W) batches as a pool at out_dir; returns its path.

    manifest: the caller's fields (source, params, seed, ...); count, size, channels, shards
    and the format version are filled in here. labels (count,) and logits (count, K) are
    stored beside the images when given.
    """
    out = Path(out_dir)
    if shard_size <= 0:
        raise UserError(f"shard size must be positive, got {shard_size}")
    claim_output(out, overwrite)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
        # mkdtemp makes a private 0700 directory; once renamed into place, the pool should be
        # shared like any directory `mkdir` makes (files written with open() follow the umask).
        staging.chmod(0o777 & ~umask())
    except OSError as error:
        raise UserError(f"cannot write a pool at {out}: {error.strerror or error}") from None
    writer = _ShardWriter(staging, shard_size)
    try:
        for batch in batches:
            if batch.dtype != torch.uint8 or batch.dim() != 4 or batch.shape[2] != batch.shape[3]:
                shape = tuple(batch.shape)
                raise ValueError(f"pool batches must be uint8 (B, C, S, S), got {batch.dtype} {shape}")
            writer.write(batch.permute(0, 2, 3, 1).cpu().numpy())  # (B, H, W, C)
        writer.finish()
        if writer.image_shape is None:
            raise UserError(f"no images to write to the pool at {out}")
        count = sum(shard["count"] for shard in writer.shards)
        size, _, channels = writer.image_shape
        fields = {"format": FORMAT, "version": VERSION, **manifest, "count": count, "size": size,
                  "channels": channels, "layout": "NHWC", "dtype": "uint8", "shards": writer.shards}  # fmt: skip
        for name, array, dtype in (("labels", labels, np.int64), ("logits", logits, np.float32)):
            if array is None:
                continue
            array = torch.as_tensor(array).cpu().numpy().astype(dtype, copy=False)
            if len(array) != count:
                raise ValueError(f"{name} has {len(array)} rows for a pool of {count} images")
            np.save(staging / f"{name}.npy", array)
            fields[name] = f"{name}.npy"
        (staging / MANIFEST).write_text(json.dumps(fields, indent=2) + "\n")  # last: marks completeness
        claim_output(out, overwrite)  # again: another writer may have finished meanwhile
        _move_into_place(staging, out)
    except OSError as error:
        raise UserError(f"cannot write a pool at {out}: {error.strerror or error}") from None
    finally:
        writer.abandon()
        shutil.rmtree(staging, ignore_errors=True)  # gone already after a successful rename
    return out


class Pool:
    """A pool on disk: images read from the shards on demand, labels and logits loaded when present.

    The shards are opened as memory maps only to check their headers; images are read with plain
    file reads into a buffer per call (`_read_into`), so resident memory stays one batch whatever
    the pool's size."""

    def __init__(self, path: "str | Path"):
        self.path = Path(path)
        if not self.path.is_dir():
            raise UserError(f"no pool at {self.path}: not a directory")
        try:
            self.manifest = json.loads((self.path / MANIFEST).read_text())
        except FileNotFoundError:
            raise UserError(f"no pool at {self.path}: {MANIFEST} is missing (an unfinished write?)") from None
        except (OSError, ValueError) as error:
            raise UserError(f"corrupt pool at {self.path}: cannot read {MANIFEST}: {error}") from None
        fields = self.manifest if isinstance(self.manifest, dict) else {}
        found = (fields.get("format"), fields.get("version"))
        if found != (FORMAT, VERSION):
            raise UserError(f"pool at {self.path} has format/version {found}; this reader needs {FORMAT!r} {VERSION}")
        try:
            self.size, self.channels = int(self.manifest["size"]), int(self.manifest["channels"])
            shards = self.manifest["shards"]
            self._shards = [self._open_shard(entry["file"], int(entry["count"])) for entry in shards]
        except (KeyError, TypeError) as error:
            raise UserError(f"corrupt pool at {self.path}: manifest lacks {error}") from None
        counts = [len(shard) for shard in self._shards]
        self._starts = np.cumsum([0, *counts])  # shard k holds images starts[k]..starts[k+1]-1
        if self._starts[-1] != self.manifest.get("count"):
            raise UserError(f"corrupt pool at {self.path}: shards hold {self._starts[-1]} images, "
                            f"manifest says {self.manifest.get('count')}")  # fmt: skip
        self.labels = self._load_optional("labels", np.int64, (len(self),))
        self.logits = self._load_optional("logits", np.float32, None)

    def _member(self, name, what: str) -> Path:
        """The file a manifest names, which must lie inside the pool: a crafted manifest must not
        make us read (or a later tool delete) '../../x.npy', '/etc/x' or a symlink out."""
        if not isinstance(name, str) or not name:
            raise UserError(f"corrupt pool at {self.path}: {what} {name!r} is not a file name")
        path = self.path / name
        # Both separators count: a pool written on Windows must not reach outside either.
        escapes = name in (".", "..") or any(separator in name for separator in "/\\")
        try:
            escapes = escapes or not path.resolve().is_relative_to(self.path.resolve())  # follows symlinks
        except (OSError, RuntimeError) as error:  # a symlink loop
            raise UserError(f"corrupt pool at {self.path}: cannot resolve {what} {name!r}: {error}") from None
        if escapes:
            raise UserError(f"corrupt pool at {self.path}: {what} {name!r} is outside the pool")
        return path

    def _open_shard(self, name: str, count: int) -> np.ndarray:
        try:
            shard = np.load(self._member(name, "shard"), mmap_mode="r")
        except (OSError, ValueError) as error:
            raise UserError(f"corrupt pool at {self.path}: cannot read shard {name}: {error}") from None
        expected = (count, self.size, self.size, self.channels)
        if shard.dtype != np.uint8 or shard.shape != expected:
            found = f"{shard.dtype} {shard.shape}"
            raise UserError(f"corrupt pool at {self.path}: shard {name} is {found}, expected uint8 {expected}")
        return shard

    def _load_optional(self, name: str, dtype, shape) -> "Tensor | None":
        if not self.manifest.get(name):
            return None
        try:
            array = np.load(self._member(self.manifest[name], name))
        except (OSError, ValueError) as error:
            raise UserError(f"corrupt pool at {self.path}: cannot read {name}: {error}") from None
        if array.dtype != dtype or len(array) != len(self) or (shape is not None and array.shape != shape):
            found = f"{array.dtype} {array.shape}"
            raise UserError(f"corrupt pool at {self.path}: {name} is {found} for {len(self)} images")
        return torch.from_numpy(array)

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __repr__(self) -> str:
        return f"Pool({str(self.path)!r}, count={len(self)}, size={self.size}, channels={self.channels})"

    def images(self, start: int, stop: int) -> Tensor:
        """uint8 (stop - start, C, H, W) of consecutive images (channels_last in memory)."""
        if not 0 <= start <= stop <= len(self):
            raise IndexError(f"images {start}:{stop} outside a pool of {len(self)}")
        out = np.empty((stop - start, self.size, self.size, self.channels), dtype=np.uint8)
        self._read_into(out, start)
        return _to_tensor(out)

    def gather(self, indices: Tensor) -> Tensor:
        """uint8 (n, C, H, W) of the images at indices (n,), in that order (repeats allowed).

        Reads each run of consecutive indices once, so a sorted selection costs few reads."""
        indices = torch.as_tensor(indices, dtype=torch.int64).cpu().numpy()
        if len(indices) and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"indices outside a pool of {len(self)} images")
        unique, position = np.unique(indices, return_inverse=True)  # sorted: runs are contiguous
        rows = np.empty((len(unique), self.size, self.size, self.channels), dtype=np.uint8)
        run_starts = np.flatnonzero(np.diff(unique, prepend=-2) != 1)
        for first, last in zip(run_starts, [*run_starts[1:], len(unique)]):
            self._read_into(rows[first:last], int(unique[first]))
        return _to_tensor(rows[position.reshape(-1)])  # back to the asked order, repeats included

    def _read_into(self, out: np.ndarray, start: int) -> None:
        """Fill out (n, H, W, C) with images start..start+n-1, across shards.

        Plain file reads, not the memory map: pages a process maps count in its resident memory
        until unmapped, so scanning a large pool through the map would grow with the pool; read
        into a buffer, only the buffer is resident (the OS page cache still serves repeats)."""
        stop, done = start + len(out), 0
        row_bytes = self.size * self.size * self.channels
        first = int(np.searchsorted(self._starts, start, side="right")) - 1
        for k in range(max(first, 0), len(self._shards)):
            lo, hi = max(start, self._starts[k]), min(stop, self._starts[k + 1])
            if lo >= hi:
                break
            shard = self._shards[k]
            with open(shard.filename, "rb") as f:
                f.seek(shard.offset + int(lo - self._starts[k]) * row_bytes)
                view = memoryview(out[done:done + hi - lo]).cast("B")
                if f.readinto(view) != len(view):
                    raise UserError(f"corrupt pool at {self.path}: shard {Path(shard.filename).name} is truncated")
            done += int(hi - lo)


def _to_tensor(images: np.ndarray) -> Tensor:
    """(n, H, W, C) numpy (a copy is made from memory maps) -> (n, C, H, W) uint8 tensor view."""
    return torch.from_numpy(np.array(images, copy=not images.flags.owndata)).permute(0, 3, 1, 2)


def _batches(source: str, seed: int, count: int, size: int, channels: int, batch_size: int,
             device: str, params: dict) -> Iterator[Tensor]:  # fmt: skip
    from .sources import render

    for start in range(0, count, batch_size):
        yield render(source, seed, start, min(batch_size, count - start), size, channels, device, **params).cpu()


def synthesize(
    source: str,
    count: int,
    size: int,
    out: "str | Path",
    channels: int = 3,
    seed: int = 0,
    batch_size: int = 4096,
    device: str = "cpu",
    overwrite: bool = False,
    shard_size: int = 65536,
    **params,
) -> Path:
    """Render images 0..count-1 of a source's stream into a pool at `out`, plus grid.png."""
    from torchvision.utils import save_image

    from .sources import render

    if not isinstance(count, int) or count <= 0:
        raise UserError(f"image count must be a positive integer, got {count!r}")
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise UserError(f"batch size must be a positive integer, got {batch_size!r}")
    render(source, seed, 0, 0, size, channels, device, **params)  # argument errors before any file is made
    manifest = {"source": source, "params": params, "seed": seed}
    batches = _batches(source, seed, count, size, channels, batch_size, device, params)
    path = write_pool(out, batches, manifest, shard_size=shard_size, overwrite=overwrite)
    sample = Pool(path).images(0, min(count, 64))
    save_image(sample.float() / 255.0, path / "grid.png", nrow=8)
    return path
