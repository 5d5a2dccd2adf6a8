"""Small nets: the paper's toy MNIST net and the compact nets the CPU demo distills between."""

from torch import nn

from ..registry import MODELS


def conv_bn(in_ch: int, out_ch: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))


class ToyMNISTNet(nn.Module):
    """The paper's Fig. 2 net: 3 conv layers -> 2 global-average-pooled features -> 3 FC layers.

    Two GAP features make the teacher's decision regions drawable in the plane.
    """

    def __init__(self, num_classes: int, in_channels: int = 1):
        super().__init__()
        self.body = nn.Sequential(conv_bn(in_channels, 32), conv_bn(32, 64, 2), nn.Conv2d(64, 2, 3, 2, 1))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Linear(2, 32), nn.ReLU(inplace=True), nn.Linear(32, 32), nn.ReLU(inplace=True), nn.Linear(32, num_classes))

    def features(self, x):
        return self.pool(self.body(x)).flatten(1)

    def forward(self, x):
        return self.fc(self.features(x))


MODELS.register("toy_mnist", ToyMNISTNet)


class PlainConvNet(nn.Module):
    """A VGG-like net: stages of (conv-bn-relu) x depth, each stage halving resolution.

    Fast on CPUs (few, wide-enough layers) which is why the demo uses it for students.
    """

    def __init__(self, num_classes: int, in_channels: int = 1, widths=(32, 64, 128), depth: int = 2):
        super().__init__()
        layers, ch = [], in_channels
        for i, width in enumerate(widths):
            for j in range(depth):
                layers.append(conv_bn(ch, width, 2 if (j == 0 and i > 0) else 1))
                ch = width
        self.body = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(ch, num_classes)

    def features(self, x):
        return self.pool(self.body(x)).flatten(1)

    def forward(self, x):
        return self.fc(self.features(x))


# Compact plain convnets for the CPU demo: 288k, 163k and 73k parameters.
@MODELS.register("convnet_small")
def convnet_small(num_classes: int, in_channels: int = 1) -> PlainConvNet:
    return PlainConvNet(num_classes, in_channels, widths=(32, 64, 128), depth=2)


@MODELS.register("convnet_24")
def convnet_24(num_classes: int, in_channels: int = 1) -> PlainConvNet:
    return PlainConvNet(num_classes, in_channels, widths=(24, 48, 96), depth=2)


@MODELS.register("convnet_tiny")
def convnet_tiny(num_classes: int, in_channels: int = 1) -> PlainConvNet:
    return PlainConvNet(num_classes, in_channels, widths=(16, 32, 64), depth=2)
