"""benchmarks/domains.py: the studies' labelled sets are balanced, well formed and the same for a seed."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

DOMAINS = Path(__file__).resolve().parents[1] / "benchmarks" / "domains.py"
SPEC = importlib.util.spec_from_file_location("domains", DOMAINS)
domains = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(domains)
import drawn_domains  # noqa: E402  beside domains.py, which put its folder on sys.path


@pytest.mark.parametrize("name, shape, classes", [("shapes", (28, 28), 10), ("letters", (32, 32, 3), 10),
                                                  ("dots", (32, 32), 10), ("corruptions", (32, 32, 3), 10),
                                                  ("rotations", (32, 32, 3), 3), ("spectra", (32, 32), 10),
                                                  ("gratings", (32, 32), 5), ("tints", (32, 32, 3), 8),
                                                  ("focus", (32, 32), 5), ("alphabet", (32, 32, 3), 26)])
def test_drawn_domains_are_balanced_uint8_and_seeded(name, shape, classes):
    build = getattr(domains, name)
    splits = build(0, train=60, test=30)
    for split, count in (("train", 60), ("test", 30)):
        images, labels = splits[split]
        assert images.shape == (count, *shape) and images.dtype == np.uint8
        per_class = np.bincount(labels, minlength=classes)
        assert len(per_class) == classes and per_class.max() - per_class.min() <= 1
    again = build(0, train=60, test=30)
    assert np.array_equal(again["train"][0], splits["train"][0])
    assert not np.array_equal(build(1, train=60, test=30)["train"][0], splits["train"][0])


def test_every_corruption_changes_the_crop():
    crop = domains._crops([domains._photo("astronaut")], 1, 32, np.random.default_rng(0))[0][0]
    for kind, name in enumerate(domains.CORRUPTIONS):
        out = domains._corrupt(kind, crop, np.random.default_rng(0))
        assert out.shape == crop.shape and out.dtype == np.uint8
        assert np.array_equal(out, crop) == (name == "none"), name


def test_rotations_turn_the_crops_as_labelled_and_a_mirror_keeps_the_class():
    # The crops come from a stream of their own, one per draw whatever the label, so each image is
    # its crop (or the crop's mirror) turned as its class says: 0 upright, 1 a quarter turn either
    # way, 2 upside down. A left-right mirror (a recipe's flip) of any image stays in its class.
    images, labels = domains.rotations(0, train=60, test=30)["train"]
    photos, crop_rng = [domains._rgb(domains._photo(n)) for n in domains.UPRIGHT_PHOTOS], np.random.default_rng(1)
    crops = [domains._crops(photos, 1, 32, crop_rng, smallest=0.3, largest=0.9)[0][0] for _ in range(60)]
    turns = {0: (0,), 1: (1, 3), 2: (2,)}
    for image, label, crop in zip(images, labels, crops):
        versions = [np.rot90(c, k) for c in (crop, crop[:, ::-1]) for k in turns[int(label)]]
        assert any(np.array_equal(image, v) for v in versions)
        assert any(np.array_equal(image[:, ::-1], v) for v in versions)


def test_gratings_lie_at_their_class_angle_and_a_mirror_keeps_the_class():
    # The stripes' angle from horizontal, from the image's structure tensor (the mean outer product
    # of its gradients), folded into 0-90 degrees as a mirror folds it: within a quarter step (plus
    # a few degrees for the pixel noise) of the class's angle, for the image and for its mirror.
    images, labels = domains.gratings(0, train=100, test=5)["train"]

    def stripe_angle(image):
        gy, gx = np.gradient(image.astype(np.float64))
        across = 0.5 * np.degrees(np.arctan2(2 * (gx * gy).mean(), (gx * gx).mean() - (gy * gy).mean()))
        return abs((across + 90 + 90) % 180 - 90)  # stripes run at right angles to the gradient

    for image, label in zip(images, labels):
        for version in (image, image[:, ::-1]):
            assert abs(stripe_angle(version) - label * drawn_domains.GRATING_STEP) < 0.25 * drawn_domains.GRATING_STEP + 4


def test_tints_take_their_class_hue_and_focus_classes_lose_detail_in_order():
    import colorsys

    images, labels = domains.tints(0, train=80, test=8)["train"]
    for image, label in zip(images, labels):
        if image.max() < 8:
            continue  # a black crop (the horse photo's background) carries no colour
        hue = colorsys.rgb_to_hsv(*image.reshape(-1, 3).mean(0) / 255)[0] * 360
        distance = abs((hue - label * 360 / domains.TINT_HUES + 180) % 360 - 180)
        assert distance < 0.25 * 360 / domains.TINT_HUES + 1, (label, hue)
    grey = np.asarray(domains._crops([domains._photo("brick")], 1, 32, np.random.default_rng(0))[0][0])
    for crop in (grey, domains._rgb(domains._photo("camera"))[100:132, 200:232, 0]):
        detail = [np.abs(np.diff(domains._focus(k, crop, np.random.default_rng(0)).astype(np.float64), axis=1)).mean()
                  for k in range(len(domains.FOCUS_SIGMAS))]
        assert all(a > b for a, b in zip(detail, detail[1:])), detail
