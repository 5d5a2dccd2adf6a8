"""Labelled and unlabelled image sets by name, converted to a model's input spec on the way in.

An `ImageSet` is uint8 images (N, C, H, W) plus optional labels. Names understood by
`open_images`:
  fashion-mnist, mnist, cifar10, cifar100   (append `:test` for the test split)
  path/to/images.npz                        (`images` uint8 (N,H,W[,C]), optional `labels`)
  path/to/pool/                             (a directory with manifest.json, see docs/pool-format.md)
  path/to/folder/                           (an ImageFolder: one sub-folder per class, or images directly;
                                             hidden entries skipped; see `open_images` for labels)
Synthetic sources (`shaders`, `leaves`, `noise`, `photos`) stream instead: see `sources`.
"""

import gzip
import os
import re
import sys
import warnings
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .augment import luminance
from .errors import UserError

CACHE_DIR = Path(os.environ.get("SURROGATE_KD_CACHE", Path.home() / ".cache" / "surrogate-kd"))
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
# PIL modes whose bands are all gray (an alpha band aside): such a folder is read as 1 channel.
GRAYSCALE_MODES = {"1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
# Per-channel statistics of the training splits, for normalisation and the noise source.
DATASET_STATS = {
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


@dataclass
class ImageSet:
    """uint8 images (N, C, H, W), with labels (N,) int64 when known, and a name for reports."""

    images: torch.Tensor
    labels: torch.Tensor | None
    classes: tuple[str, ...] | None
    name: str

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def size(self) -> int:
        return self.images.shape[-1]

    @property
    def channels(self) -> int:
        return self.images.shape[1]


def convert_images(images: torch.Tensor, size: int, channels: int, chunk: int = 4096) -> torch.Tensor:
    """uint8 (N, C, H, W) -> uint8 (N, channels, size, size): luminance/repeat, antialiased resize."""
    if images.shape[1] == channels and images.shape[-2:] == (size, size):
        return images
    out = torch.empty((images.shape[0], channels, size, size), dtype=torch.uint8)
    for start in range(0, images.shape[0], chunk):
        x = images[start:start + chunk].float()
        if x.shape[1] == 3 and channels == 1:
            x = luminance(x)
        elif x.shape[1] == 1 and channels == 3:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[start:start + chunk] = x.round().clamp(0, 255).to(torch.uint8)
    return out


def _read_idx(path: Path) -> np.ndarray:
    """Read a (gzipped) IDX file, the MNIST family's format: magic, dims, then raw uint8."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _fashion_mnist(split: str, download: bool) -> ImageSet:
    prefix = "train" if split == "train" else "t10k"
    root = DEBIAN_FASHION_MNIST
    if not (root / f"{prefix}-images-idx3-ubyte.gz").exists():
        # Elsewhere, torchvision's downloader fetches the same files into our cache.
        root = CACHE_DIR / "FashionMNIST" / "raw"
        if not (root / f"{prefix}-images-idx3-ubyte.gz").exists() and not (root / f"{prefix}-images-idx3-ubyte").exists():
            if not download:
                raise UserError("Fashion-MNIST not found (Debian: apt-get install dataset-fashion-mnist; "
                                "or allow downloading with --download)")
            import torchvision

            torchvision.datasets.FashionMNIST(str(CACHE_DIR), train=split == "train", download=True)
    image_file = next(p for p in (root / f"{prefix}-images-idx3-ubyte.gz", root / f"{prefix}-images-idx3-ubyte") if p.exists())
    label_file = next(p for p in (root / f"{prefix}-labels-idx1-ubyte.gz", root / f"{prefix}-labels-idx1-ubyte") if p.exists())
    images = torch.from_numpy(_read_idx(image_file).copy()).unsqueeze(1)  # (N, 1, 28, 28) uint8
    labels = torch.from_numpy(_read_idx(label_file).astype(np.int64))
    return ImageSet(images, labels, FASHION_MNIST_CLASSES, f"fashion-mnist:{split}")


def _torchvision_dataset(name: str, split: str, download: bool) -> ImageSet:
    import torchvision

    cls = {"mnist": torchvision.datasets.MNIST, "cifar10": torchvision.datasets.CIFAR10,
           "cifar100": torchvision.datasets.CIFAR100}[name]
    try:
        ds = cls(str(CACHE_DIR), train=split == "train", download=download)
    except RuntimeError as e:
        raise UserError(f"{name} not found in {CACHE_DIR} ({e}); allow downloading with --download") from None
    data = ds.data.numpy() if torch.is_tensor(ds.data) else np.asarray(ds.data)
    images = torch.from_numpy(data)
    images = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2).contiguous()
    labels = torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)
    return ImageSet(images, labels, tuple(ds.classes), f"{name}:{split}")


def _npz(path: Path) -> ImageSet:
    try:
        with np.load(path) as f:
            if "images" not in f:
                raise UserError(f"{path}: no 'images' array (expected uint8 (N,H,W[,C]))")
            images, labels = f["images"], f["labels"] if "labels" in f else None
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise UserError(f"cannot read {path}: {e}") from None
    _check_npz_images(path, images)
    t = torch.from_numpy(images)
    t = t.unsqueeze(1) if t.ndim == 3 else t.permute(0, 3, 1, 2).contiguous()  # (N, C, H, W) uint8
    if labels is not None:
        _check_npz_labels(path, labels, len(t))
        labels = torch.from_numpy(labels.astype(np.int64))
    return ImageSet(t, labels, None, path.name)


def _check_npz_images(path: Path, images: np.ndarray) -> None:
    """UserError unless images are non-empty uint8 (N,H,W) or (N,H,W,C) with C in (1, 3)."""
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or len(images) == 0:
        raise UserError(f"{path}: 'images' must be non-empty uint8 (N,H,W[,C]), got {images.dtype} {images.shape}")
    if images.ndim == 3:
        return
    # (N, 3, 32, 32) from a PyTorch pipeline would otherwise read as 3-pixel-high images.
    if images.shape[1] in (1, 3, 4) and min(images.shape[2:]) > 4:
        raise UserError(f"{path}: 'images' {images.shape} is channels-first (N,C,H,W); expected (N,H,W,C)")
    if images.shape[3] == 4:
        raise UserError(f"{path}: 'images' {images.shape} has 4 channels (RGBA?), which is not supported; "
                        "convert them to RGB (N,H,W,3)")
    if images.shape[3] not in (1, 3):
        raise UserError(f"{path}: 'images' {images.shape} has {images.shape[3]} channels; expected 1 or 3")


def _check_npz_labels(path: Path, labels: np.ndarray, count: int) -> None:
    """UserError unless labels are one non-negative integer per image, (count,)."""
    if labels.ndim == 2 and labels.shape[1] == 1:
        raise UserError(f"{path}: 'labels' is {labels.shape}; flatten them to ({labels.shape[0]},)")
    if labels.ndim != 1:
        raise UserError(f"{path}: 'labels' must be 1-D (N,), got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f"{path}: 'labels' must be integer class indices, got {labels.dtype}")
    if len(labels) != count:
        raise UserError(f"{path}: {len(labels)} labels for {count} images")
    if len(labels) and labels.min() < 0:
        raise UserError(f"{path}: 'labels' must be non-negative class indices, the smallest is {labels.min()}")


def _note(message: str) -> None:
    """Tell the user about a choice made for them, on stderr beside the CLI's own lines."""
    print(f"surrogate-kd: {message}", file=sys.stderr)


def _image_files(folder: Path, recursive: bool = False) -> list[Path]:
    """Image files in folder (and below it when recursive), sorted, skipping hidden entries at
    any depth: .DS_Store, macOS ._x.png resource forks, .ipynb_checkpoints/ copies."""
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(f for f in found if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()
                  and not any(part.startswith(".") for part in f.relative_to(folder).parts))  # fmt: skip


def _class_labels(root: Path, names: list[str],
                  classes: tuple[str, ...] | None) -> tuple[dict[str, int], tuple[str, ...]]:
    """Each class folder's label, and the class names those labels index.

    With the model's class names, folders named after them are labelled by the model's order:
    sorting folder names would give a teacher's 'cat' images the label of its 'airplane'.
    Folders named 0, 1, ... 10 are labelled by value ('10' would sort before '2').
    """
    if classes and all(name in classes for name in names):
        _note(f"labels of {root} follow the model's class names")
        return {name: classes.index(name) for name in names}, tuple(classes)
    numbers = {name: int(name) for name in names if name.isascii() and name.isdigit()}
    if len(numbers) == len(names) and len(set(numbers.values())) == len(names):
        top = max(numbers.values())
        named = tuple(classes) if classes and top < len(classes) else tuple(str(i) for i in range(top + 1))
        return numbers, named
    ordered = sorted(names)
    if classes:
        unmatched = ", ".join([repr(name) for name in ordered if name not in classes][:3])
        _note(f"folders of {root} are not all the model's class names (e.g. {unmatched}); "
              "labelling them in sorted order")
    return {name: i for i, name in enumerate(ordered)}, tuple(ordered)


@contextmanager
def _opened_image(path: Path):
    """PIL's Image.open, with unreadable files and decompression bombs as UserErrors naming the file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # Pillow only warns between 1x and 2x its pixel limit: a 20000x20000 file would then
            # be decoded in full, gigabytes of memory, before being shrunk to a few pixels.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                yield image
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        pixels = re.search(r"\((\d+) pixels\)", str(e))
        count = f"{int(pixels[1]):,} pixels" if pixels else "too many pixels"
        raise UserError(f"image {path} has {count}, over the decompression-bomb limit "
                        f"(PIL.Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS:,}); refusing to decode it") from None
    except (UnidentifiedImageError, OSError) as e:
        raise UserError(f"corrupt or unreadable image {path}: {e.__class__.__name__}") from None


def _infer_spec(root: Path, first: Path, size: int | None, channels: int | None) -> tuple[int, int]:
    """Fill in a missing size (the first image's larger side) or channel count (1 for grayscale)."""
    with _opened_image(first) as image:
        size = size or max(image.size)
        channels = channels or (1 if image.mode in GRAYSCALE_MODES else 3)
    _note(f"reading {root} as {size}x{size} images with {channels} channel(s), from its first image {first.name}")
    return size, channels


def _image_folder(root: Path, size: int | None = None, channels: int | None = None,
                  classes: tuple[str, ...] | None = None) -> ImageSet:
    """One sub-folder per class (labelled) or images directly in `root` (unlabelled).

    classes: the class names of the model the images are for, to label folders named after them.
    """
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if class_dirs:
        label_of, classes = _class_labels(root, [d.name for d in class_dirs], classes)
        files = [(f, label_of[d.name]) for d in class_dirs for f in _image_files(d, recursive=True)]
        if loose := _image_files(root):
            _note(f"ignoring {len(loose)} image(s) directly in {root}, outside its class folders")
    else:
        files = [(f, -1) for f in _image_files(root)]
        classes = None
    if not files:
        raise UserError(f"no images found in {root} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    if size is None or channels is None:
        size, channels = _infer_spec(root, files[0][0], size, channels)
    from PIL import Image

    mode = "L" if channels == 1 else "RGB"
    images = torch.empty((len(files), channels, size, size), dtype=torch.uint8)
    for i, (f, _) in enumerate(files):
        with _opened_image(f) as image:
            pixels = np.asarray(image.convert(mode).resize((size, size), Image.BILINEAR))  # (H, W[, C])
        arr = torch.from_numpy(pixels.copy())
        images[i] = arr.unsqueeze(0) if arr.ndim == 2 else arr.permute(2, 0, 1)
    labels = torch.tensor([y for _, y in files]) if classes else None
    return ImageSet(images, labels, classes, root.name)


def _pool(root: Path) -> ImageSet:
    from .pool import Pool

    pool = Pool(root)
    images = pool.images(0, len(pool))
    return ImageSet(images, pool.labels, tuple(pool.manifest.get("classes") or ()) or None, root.name)


def open_images(name: str, size: int | None = None, channels: int | None = None, download: bool = False,
                classes: tuple[str, ...] | None = None) -> ImageSet:
    """Load an image set by name or path; with size/channels, convert it to that input spec.

    classes: the class names of the model the images are for (its spec.classes); an image
    folder whose sub-folders carry those names is labelled in the model's order. An image
    folder without size/channels is read at its first image's size and channel count.
    """
    base, _, split = name.partition(":")
    split = split or "train"
    if split not in ("train", "test"):
        raise UserError(f"unknown split '{split}' in '{name}' (use :train or :test)")
    if base == "fashion-mnist":
        s = _fashion_mnist(split, download)
    elif base in ("mnist", "cifar10", "cifar100"):
        s = _torchvision_dataset(base, split, download)
    else:
        path = Path(name)
        if not path.exists():
            raise UserError(f"no such image set: '{name}' (a path, or one of fashion-mnist, mnist, cifar10, cifar100)")
        if path.suffix == ".npz":
            s = _npz(path)
        elif path.is_dir() and (path / "manifest.json").exists():
            s = _pool(path)
        elif path.is_dir():
            s = _image_folder(path, size, channels, classes)
        else:
            raise UserError(f"{path}: not an image set (expected a .npz file, a pool or an image folder)")
    if len(s) == 0:
        raise UserError(f"image set '{name}' is empty")
    if size is not None and channels is not None:
        s.images = convert_images(s.images, size, channels)
    return s
