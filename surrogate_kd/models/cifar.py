"""Small-image architectures: CIFAR-style ResNets (3x3 stem, no max-pool), WRN, MobileNetV2.

These follow the standard CIFAR variants used throughout the KD literature (and the paper's
Tables 1-7), so a 32x32 (or 28x28) input keeps enough spatial resolution through the net.
"""

from torch import nn
import torch.nn.functional as F

from ..registry import MODELS


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != out_planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride, bias=False), nn.BatchNorm2d(out_planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet with a 3x3 stride-1 stem and no max-pool; `widths` sets the stage widths."""

    def __init__(self, block, depths, num_classes: int, in_channels: int = 3, widths=(64, 128, 256, 512)):
        super().__init__()
        self.in_planes = widths[0]
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True)
        )
        stages = []
        for i, (width, depth) in enumerate(zip(widths, depths)):
            stride = 1 if i == 0 else 2
            for s in [stride] + [1] * (depth - 1):
                stages.append(block(self.in_planes, width, s))
                self.in_planes = width * block.expansion
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.in_planes, num_classes)

    def features(self, x):
        """Penultimate (global-average-pooled) features, (B, D)."""
        return self.pool(self.stages(self.stem(x))).flatten(1)

    def forward(self, x):
        return self.fc(self.features(x))


@MODELS.register("resnet18")
def resnet18(num_classes: int, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(BasicBlock, (2, 2, 2, 2), num_classes, in_channels)


@MODELS.register("resnet34")
def resnet34(num_classes: int, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(BasicBlock, (3, 4, 6, 3), num_classes, in_channels)


@MODELS.register("resnet50")
def resnet50(num_classes: int, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(Bottleneck, (3, 4, 6, 3), num_classes, in_channels)


@MODELS.register("resnet_mini")
def resnet_mini(num_classes: int, in_channels: int = 3) -> CifarResNet:
    """A 0.3M-parameter ResNet for CPU-scale work (the demo)."""
    return CifarResNet(BasicBlock, (1, 1, 1), num_classes, in_channels, widths=(32, 64, 128))


class WideBlock(nn.Module):
    """Pre-activation wide-ResNet block (Zagoruyko & Komodakis)."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride, bias=False)

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class WideResNet(nn.Module):
    def __init__(self, depth: int, widen: int, num_classes: int, in_channels: int = 3):
        super().__init__()
        assert (depth - 4) % 6 == 0, "WRN depth must be 6n+4"
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.stem = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        blocks, in_planes = [], widths[0]
        for i, width in enumerate(widths[1:]):
            for j in range(n):
                blocks.append(WideBlock(in_planes, width, (1 if i == 0 else 2) if j == 0 else 1))
                in_planes = width
        self.stages = nn.Sequential(*blocks, nn.BatchNorm2d(in_planes), nn.ReLU(inplace=True))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)

    def features(self, x):
        return self.pool(self.stages(self.stem(x))).flatten(1)

    def forward(self, x):
        return self.fc(self.features(x))


@MODELS.register("wrn40_2")
def wrn40_2(num_classes: int, in_channels: int = 3) -> WideResNet:
    return WideResNet(40, 2, num_classes, in_channels)


class InvertedResidual(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int, expand: int):
        super().__init__()
        hidden = in_planes * expand
        self.use_residual = stride == 1 and in_planes == out_planes
        layers = []
        if expand != 1:
            layers += [nn.Conv2d(in_planes, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True)]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, out_planes, 1, bias=False), nn.BatchNorm2d(out_planes),
        ]
        self.block = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.block(x) if self.use_residual else self.block(x)


class CifarMobileNetV2(nn.Module):
    """MobileNetV2 with the first two strides set to 1, the usual adaptation to 32x32 inputs."""

    # (expansion, channels, repeats, stride)
    SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]

    def __init__(self, num_classes: int, in_channels: int = 3):
        super().__init__()
        layers = [nn.Conv2d(in_channels, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6(inplace=True)]
        in_planes = 32
        for expand, planes, repeats, stride in self.SETTINGS:
            for i in range(repeats):
                layers.append(InvertedResidual(in_planes, planes, stride if i == 0 else 1, expand))
                in_planes = planes
        layers += [nn.Conv2d(in_planes, 1280, 1, bias=False), nn.BatchNorm2d(1280), nn.ReLU6(inplace=True)]
        self.body = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(1280, num_classes)

    def features(self, x):
        return self.pool(self.body(x)).flatten(1)

    def forward(self, x):
        return self.fc(self.features(x))


MODELS.register("mobilenetv2", CifarMobileNetV2)
