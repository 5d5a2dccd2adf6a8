"""Labelled and unlabelled image sets by name, converted to a model's input spec on the way in.

An `ImageSet` is uint8 images (N, C, H, W) plus optional labels. Names understood by
`open_images`:
  fashion-mnist, mnist, cifar10, cifar100   (append `:test` for the test split)
  path/to/images.npz                        (`images` uint8 (N,H,W[,C]), optional `labels`)
  path/to/pool/                             (a directory with manifest.json, see docs/pool-format.md)
  path/to/folder/                           (an ImageFolder: one sub-folder per class, or images directly)
Synthetic sources (`shaders`, `leaves`, `noise`, `photos`) stream instead: see `sources`.
"""

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .errors import UserError

CACHE_DIR = Path(os.environ.get("SURROGATE_KD_CACHE", Path.home() / ".cache" / "surrogate-kd"))
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}

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
    luminance = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    for start in range(0, images.shape[0], chunk):
        x = images[start:start + chunk].float()
        if x.shape[1] == 3 and channels == 1:
            x = (x * luminance).sum(1, keepdim=True)
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
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path}: {e}") from None
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or len(images) == 0:
        raise UserError(f"{path}: 'images' must be non-empty uint8 (N,H,W[,C]), got {images.dtype} {images.shape}")
    t = torch.from_numpy(images)
    t = t.unsqueeze(1) if t.ndim == 3 else t.permute(0, 3, 1, 2).contiguous()
    lab = None if labels is None else torch.as_tensor(labels, dtype=torch.int64)
    if lab is not None and len(lab) != len(t):
        raise UserError(f"{path}: {len(lab)} labels for {len(t)} images")
    return ImageSet(t, lab, None, path.name)


def _image_folder(root: Path, size: int, channels: int) -> ImageSet:
    """One sub-folder per class (labelled) or images directly in `root` (unlabelled)."""
    from PIL import Image, UnidentifiedImageError

    class_dirs = sorted(d for d in root.iterdir() if d.is_dir())
    if class_dirs:
        files = [(f, i) for i, d in enumerate(class_dirs) for f in sorted(d.rglob("*")) if f.suffix.lower() in IMAGE_SUFFIXES]
        classes = tuple(d.name for d in class_dirs)
    else:
        files = [(f, -1) for f in sorted(root.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
        classes = None
    if not files:
        raise UserError(f"no images found in {root} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    mode = "L" if channels == 1 else "RGB"
    images = torch.empty((len(files), channels, size, size), dtype=torch.uint8)
    for i, (f, _) in enumerate(files):
        try:
            with Image.open(f) as im:
                im = im.convert(mode).resize((size, size), Image.BILINEAR)
        except (UnidentifiedImageError, OSError) as e:
            raise UserError(f"corrupt or unreadable image {f}: {e.__class__.__name__}") from None
        arr = torch.from_numpy(np.asarray(im).copy())
        images[i] = arr.unsqueeze(0) if arr.ndim == 2 else arr.permute(2, 0, 1)
    labels = torch.tensor([y for _, y in files]) if classes else None
    return ImageSet(images, labels, classes, root.name)


def _pool(root: Path) -> ImageSet:
    from .pool import Pool

    pool = Pool(root)
    images = pool.images(0, len(pool))
    return ImageSet(images, pool.labels, tuple(pool.manifest.get("classes") or ()) or None, root.name)


def open_images(name: str, size: int | None = None, channels: int | None = None, download: bool = False) -> ImageSet:
    """Load an image set by name or path; with size/channels, convert it to that input spec."""
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
            if size is None or channels is None:
                raise UserError(f"reading the image folder {path} needs a target size and channel count")
            s = _image_folder(path, size, channels)
        else:
            raise UserError(f"{path}: not an image set (expected a .npz file, a pool or an image folder)")
    if len(s) == 0:
        raise UserError(f"image set '{name}' is empty")
    if size is not None and channels is not None:
        s.images = convert_images(s.images, size, channels)
    return s
