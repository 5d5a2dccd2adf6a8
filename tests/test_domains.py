"""benchmarks/domains.py: the studies' labelled sets are balanced, well formed and the same for a seed."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

DOMAINS = Path(__file__).resolve().parents[1] / "benchmarks" / "domains.py"
SPEC = importlib.util.spec_from_file_location("domains", DOMAINS)
domains = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(domains)


@pytest.mark.parametrize("name, shape", [("shapes", (28, 28)), ("letters", (32, 32, 3)), ("dots", (32, 32)),
                                         ("corruptions", (32, 32, 3))])
def test_drawn_domains_are_balanced_uint8_and_seeded(name, shape):
    build = getattr(domains, name)
    splits = build(0, train=40, test=20)
    for split, count in (("train", 40), ("test", 20)):
        images, labels = splits[split]
        assert images.shape == (count, *shape) and images.dtype == np.uint8
        assert np.bincount(labels, minlength=10).tolist() == [count // 10] * 10
    again = build(0, train=40, test=20)
    assert np.array_equal(again["train"][0], splits["train"][0])
    assert not np.array_equal(build(1, train=40, test=20)["train"][0], splits["train"][0])


def test_every_corruption_changes_the_crop():
    crop = domains._crops([domains._photo("astronaut")], 1, 32, np.random.default_rng(0))[0][0]
    for kind, name in enumerate(domains.CORRUPTIONS):
        out = domains._corrupt(kind, crop, np.random.default_rng(0))
        assert out.shape == crop.shape and out.dtype == np.uint8
        assert np.array_equal(out, crop) == (name == "none"), name
