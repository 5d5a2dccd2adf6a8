"""Architectures by name, and the wrapper that makes every model take [0, 1] images.

Names: our own small-image nets (below), any torchvision classification model as
`torchvision:<name>` (e.g. `torchvision:resnet18`), and any timm model as `timm:<name>`
when timm is installed.
"""

from functools import partial

import torch
from torch import nn

from ..config import InputSpec
from ..errors import UserError
from ..registry import Registry
from .cifar import BasicBlock, Bottleneck, CifarMobileNetV2, CifarResNet, WideResNet
from .small import PlainConvNet, ToyMNISTNet

# Each entry: fn(num_classes, in_channels) -> nn.Module taking normalised (B, C, H, W) floats.
MODELS: Registry = Registry("model")
MODELS.register("resnet18")(partial(CifarResNet, BasicBlock, (2, 2, 2, 2)))
MODELS.register("resnet34")(partial(CifarResNet, BasicBlock, (3, 4, 6, 3)))
MODELS.register("resnet50")(partial(CifarResNet, Bottleneck, (3, 4, 6, 3)))
MODELS.register("wrn40_2")(partial(WideResNet, 40, 2))
MODELS.register("mobilenetv2")(CifarMobileNetV2)
MODELS.register("toy_mnist")(ToyMNISTNet)
# Compact nets for CPU-scale work (the demo): a 0.3M-parameter ResNet and small plain convnets
# (288k, 163k and 73k parameters).
MODELS.register("resnet_mini")(partial(CifarResNet, BasicBlock, (1, 1, 1), widths=(32, 64, 128)))
MODELS.register("convnet_small")(partial(PlainConvNet, widths=(32, 64, 128), depth=2))
MODELS.register("convnet_24")(partial(PlainConvNet, widths=(24, 48, 96), depth=2))
MODELS.register("convnet_tiny")(partial(PlainConvNet, widths=(16, 32, 64), depth=2))


def model_names() -> list[str]:
    return MODELS.names() + ["torchvision:<name>", "timm:<name>"]


def create_network(arch: str, num_classes: int, in_channels: int) -> nn.Module:
    """The bare network for `arch` (no normalisation), freshly initialised."""
    if arch.startswith("torchvision:"):
        import torchvision

        name = arch.split(":", 1)[1]
        if name not in torchvision.models.list_models(module=torchvision.models):
            raise UserError(f"unknown torchvision classification model '{name}'")
        net = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
        if in_channels != 3:
            # torchvision nets expect RGB; repeating gray is exact and keeps the stem unchanged.
            net = nn.Sequential(_RepeatChannels(3), net)
        return net
    if arch.startswith("timm:"):
        try:
            import timm
        except ImportError:
            raise UserError("model 'timm:...' needs timm: pip install 'surrogate-kd[timm]'") from None
        return timm.create_model(arch.split(":", 1)[1], pretrained=False, num_classes=num_classes, in_chans=in_channels)
    if arch not in MODELS:
        raise UserError(f"unknown model '{arch}'; valid: {', '.join(model_names())}")
    return MODELS.get(arch)(num_classes=num_classes, in_channels=in_channels)


class _RepeatChannels(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels

    def forward(self, x):
        return x.expand(-1, self.channels, -1, -1)


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
