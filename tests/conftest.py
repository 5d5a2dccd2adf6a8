"""Shared fixtures: CPU by default (SURROGATE_KD_TEST_DEVICE to change), slow/gpu tests opt-in."""

import os

import pytest
import torch

from surrogate_kd.config import InputSpec


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow")
    parser.addoption("--rungpu", action="store_true", help="also run tests marked gpu")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "slow" in item.keywords and not config.getoption("--runslow"):
            item.add_marker(pytest.mark.skip(reason="slow: run with --runslow"))
        if "gpu" in item.keywords and not (config.getoption("--rungpu") and torch.cuda.is_available()):
            item.add_marker(pytest.mark.skip(reason="gpu: run with --rungpu on a CUDA machine"))


@pytest.fixture(scope="session", autouse=True)
def _threads():
    torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def device() -> str:
    return os.environ.get("SURROGATE_KD_TEST_DEVICE", "cpu")


@pytest.fixture
def tiny_spec() -> InputSpec:
    return InputSpec(16, 1, (0.5,), (0.25,), tuple(f"c{i}" for i in range(4)))


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """A learnable 4-class .npz set at 16x16: horizontal stripes, vertical stripes, checks, a blob.

    Flips, crops and mixing keep the classes apart, so augmentation paths can be tested on it."""
    import numpy as np

    g = np.random.default_rng(0)
    n = 512
    labels = np.arange(n) % 4
    r, c = np.mgrid[0:16, 0:16]
    patterns = [(r // 2) % 2, (c // 2) % 2, ((r // 2) + (c // 2)) % 2, ((r - 7.5) ** 2 + (c - 7.5) ** 2 < 20)]
    images = np.stack([patterns[y] * 180 + g.random((16, 16)) * 60 for y in labels]).astype(np.uint8)
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    np.savez(path, images=images, labels=labels)
    return path
