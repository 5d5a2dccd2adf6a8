"""Architectures by name, and the wrapper that makes every model take [0, 1] images.

Names (the `MODELS` registry): our own small-image nets, registered beside their classes in
cifar.py and small.py, any torchvision classification model as `torchvision:<name>` (e.g.
`torchvision:resnet18`), and any timm model as `timm:<name>` when timm is installed (external.py).
"""

import torch
from torch import nn

from ..config import InputSpec
from ..errors import UserError
from ..registry import MODELS
from . import cifar, external, small  # noqa: F401  each registers its models in MODELS


def model_names() -> list[str]:
    return MODELS.names()


def create_network(arch: str, num_classes: int, in_channels: int) -> nn.Module:
    """The bare network for `arch` (no normalisation), freshly initialised."""
    family, colon, name = arch.partition(":")
    if colon:  # `torchvision:resnet18` is the family entry `torchvision:<name>` given name='resnet18'
        return MODELS.get(f"{family}:<name>")(num_classes, in_channels, name=name)
    return MODELS.get(arch)(num_classes, in_channels)


class ImageClassifier(nn.Module):
    """A network plus its input spec: takes (B, C, H, W) floats in [0, 1], normalises inside.

    Keeping normalisation in the model means teacher and student can be fed the very same
    augmented batch even when their input statistics differ.
    """

    def __init__(self, net: nn.Module, arch: str, spec: InputSpec):
        super().__init__()
        self.net, self.arch, self.spec = net, arch, spec
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, -1, 1, 1), persistent=False)

    @property
    def num_classes(self) -> int:
        return len(self.spec.classes)

    def forward(self, x):
        return self.net((x - self.mean) / self.std)

    def features(self, x):
        """Penultimate features when the network exposes them (our own nets do)."""
        if not hasattr(self.net, "features"):
            raise UserError(f"model '{self.arch}' does not expose penultimate features")
        return self.net.features((x - self.mean) / self.std)


def build_model(arch: str, spec: InputSpec) -> ImageClassifier:
    return ImageClassifier(create_network(arch, len(spec.classes), spec.channels), arch, spec)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
