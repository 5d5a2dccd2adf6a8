"""Shared fixtures: CPU by default (SURROGATE_KD_TEST_DEVICE to change), slow/gpu tests opt-in.

Two small worlds the test files share:
  planted    a teacher whose answers are known (the brightest quadrant of a 16x16 image) and
             images drawn to get any answer wanted: for selection, the teacher's logits, the
             batch streams, the class-map split and the score
  tiny_*     a two-convolution model, a fast fp32 training config and a Ctrl-C simulator: for
             the training loop, alone and data-parallel
"""

import os
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from surrogate_kd.errors import UserError
from surrogate_kd.config import InputSpec, TrainConfig
from surrogate_kd.models import ImageClassifier

TINY_SPEC = InputSpec(16, 1, (0.5,), (0.25,), tuple(f"c{i}" for i in range(4)))


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
    return TINY_SPEC


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """A learnable 4-class .npz set at 16x16: horizontal stripes, vertical stripes, checks, a blob.

    Flips, crops and mixing keep the classes apart, so augmentation paths can be tested on it."""
    g = np.random.default_rng(0)
    n = 512
    labels = np.arange(n) % 4
    r, c = np.mgrid[0:16, 0:16]
    patterns = [(r // 2) % 2, (c // 2) % 2, ((r // 2) + (c // 2)) % 2, ((r - 7.5) ** 2 + (c - 7.5) ** 2 < 20)]
    images = np.stack([patterns[y] * 180 + g.random((16, 16)) * 60 for y in labels]).astype(np.uint8)
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    np.savez(path, images=images, labels=labels)
    return path


# The planted teacher -------------------------------------------------------------------------

class Quadrants(nn.Module):
    """Logits = 10 x (mean of each quadrant): the brightest quadrant wins."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(4, 4)
        with torch.no_grad():
            self.head.weight.copy_(torch.eye(4) * 10)
            self.head.bias.zero_()
        self.calls = 0  # images seen, to tell a cache hit from a recomputation

    def features(self, x):  # (B, 1, 16, 16) -> (B, 4): quadrants in row order = class ids
        return F.adaptive_avg_pool2d(x, 2).flatten(1)

    def forward(self, x):
        self.calls += x.shape[0]
        return self.head(self.features(x))


@dataclass(frozen=True)
class Planted:
    """The planted teacher and images that get the answers a test chooses.

    The teacher predicts the brightest quadrant of a 16x16 image; its penultimate features are the
    four quadrant means. Its input spec is `tiny_spec`: classes c0..c3, one channel.
    """

    spec: InputSpec = TINY_SPEC

    def teacher(self) -> ImageClassifier:
        """A fresh teacher: `teacher.net.calls` counts the images it has seen."""
        return ImageClassifier(Quadrants(), "quadrants", self.spec)

    @staticmethod
    def images(classes, seed=0) -> np.ndarray:
        """uint8 (N, 16, 16): image i is dim noise with quadrant classes[i] brightened (varying amounts)."""
        g = np.random.default_rng(seed)
        images = g.integers(0, 100, (len(classes), 16, 16))
        for i, c in enumerate(classes):
            r, col = divmod(int(c), 2)
            images[i, r * 8:(r + 1) * 8, col * 8:(col + 1) * 8] += 120 + g.integers(0, 35, (8, 8))
        return images.astype(np.uint8)

    def npz(self, path, classes, seed=0) -> str:
        """An unlabelled .npz set of `images(classes, seed)` at `path`; returns the path as a string."""
        np.savez(path, images=self.images(classes, seed))
        return str(path)


@pytest.fixture
def planted() -> Planted:
    return Planted()


# Tiny training ---------------------------------------------------------------------------------
# Module-level (not only fixtures) so that test_parallel can hand them to spawned ranks by pickle.

class TinyConvNet(nn.Module):
    """Two convolutions and global pooling: learns the fixture's 4 patterns in seconds."""

    def __init__(self, num_classes=4, in_channels=1):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        return self.fc(self.body(x))


def build_tiny_model(spec: InputSpec) -> ImageClassifier:
    return ImageClassifier(TinyConvNet(len(spec.classes), spec.channels), "tiny_conv", spec)


FAST_CONFIG = TrainConfig(epochs=4, batch_size=64, lr=0.1, tau=2.0, regime="none", mixup=False, precision="fp32",
                          channels_last=False, log_every=5)


class InterruptAt:
    """Batches that raise KeyboardInterrupt at a given step, like a user pressing Ctrl-C."""

    def __init__(self, inner, step):
        self.inner, self.step, self.steps_per_epoch = inner, step, inner.steps_per_epoch

    def batch(self, step):
        if step == self.step:
            raise KeyboardInterrupt
        return self.inner.batch(step)


@pytest.fixture
def tiny_model():
    """`tiny_model(spec)` -> a fresh TinyConvNet classifier (initialised from torch's global seed)."""
    return build_tiny_model


@pytest.fixture
def fast_config() -> TrainConfig:
    """4 epochs, no augmentation or mixup, fp32: the loop's logic in seconds."""
    return FAST_CONFIG


@pytest.fixture
def interrupt_at():
    """`interrupt_at(batches, step)` -> the same batches, interrupted at `step`."""
    return InterruptAt


def raises_one_line(fn, *fragments: str) -> str:
    """Call `fn`, expect a UserError whose single-line message holds every fragment."""
    with pytest.raises(UserError) as caught:
        fn()
    message = str(caught.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message
