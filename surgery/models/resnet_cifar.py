"""CIFAR-style ResNets (He et al. 2016, section 4.2): 3 stages of 16/32/64 channels,
6n+2 layers, projection shortcuts (1x1 conv + BN) where the shape changes."""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from surgery.core.errors import ArgumentError
from surgery.models.registry import register_model

__all__ = ["BasicBlock", "CifarResNet", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110"]


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth: int, num_classes: int = 10) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ArgumentError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers, cin = [], 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = [BasicBlock(cin, cout, stride)] + [BasicBlock(cout, cout) for _ in range(n - 1)]
            layers.append(nn.Sequential(*blocks))
            cin = cout
        self.layer1, self.layer2, self.layer3 = layers
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.pool(x).flatten(1))


@register_model("resnet20")
def resnet20(num_classes: int = 10) -> CifarResNet:
    """CIFAR ResNet-20 (He et al. 2016, option-B shortcuts), 32x32 or smaller inputs."""
    return CifarResNet(20, num_classes)


@register_model("resnet32")
def resnet32(num_classes: int = 10) -> CifarResNet:
    """CIFAR ResNet-32 (He et al. 2016, option-B shortcuts), 32x32 or smaller inputs."""
    return CifarResNet(32, num_classes)


@register_model("resnet44")
def resnet44(num_classes: int = 10) -> CifarResNet:
    """CIFAR ResNet-44 (He et al. 2016, option-B shortcuts), 32x32 or smaller inputs."""
    return CifarResNet(44, num_classes)


@register_model("resnet56")
def resnet56(num_classes: int = 10) -> CifarResNet:
    """CIFAR ResNet-56 (He et al. 2016, option-B shortcuts), 32x32 or smaller inputs."""
    return CifarResNet(56, num_classes)


@register_model("resnet110")
def resnet110(num_classes: int = 10) -> CifarResNet:
    """CIFAR ResNet-110 (He et al. 2016, option-B shortcuts), 32x32 or smaller inputs."""
    return CifarResNet(110, num_classes)
