"""benchmarks/domains.py: the studies' labelled sets are balanced, well formed and the same for a seed."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

DOMAINS = Path(__file__).resolve().parents[1] / "benchmarks" / "domains.py"
SPEC = importlib.util.spec_from_file_location("domains", DOMAINS)
domains = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(domains)


@pytest.mark.parametrize("name, shape, classes", [("shapes", (28, 28), 10), ("letters", (32, 32, 3), 10),
                                                  ("dots", (32, 32), 10), ("corruptions", (32, 32, 3), 10),
                                                  ("rotations", (32, 32, 3), 3), ("spectra", (32, 32), 10)])
def test_drawn_domains_are_balanced_uint8_and_seeded(name, shape, classes):
    build = getattr(domains, name)
    splits = build(0, train=60, test=30)
    for split, count in (("train", 60), ("test", 30)):
        images, labels = splits[split]
        assert images.shape == (count, *shape) and images.dtype == np.uint8
        assert np.bincount(labels, minlength=classes).tolist() == [count // classes] * classes
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
