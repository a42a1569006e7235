"""MobileNetV2 for 32x32 inputs (Sandler et al. 2018; stride 1 in the stem and the second
stage, as in the CIFAR variants used by pruning papers)."""
from __future__ import annotations

import torch.nn as nn

from surgery.models.registry import register_model

__all__ = ["MobileNetV2Cifar", "mobilenetv2_cifar"]

# expansion t, output channels c, repeats n, first stride s
_STAGES = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def _conv_bn(cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1, act: bool = True) -> list:
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return layers + [nn.ReLU6(inplace=True)] if act else layers


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers = _conv_bn(cin, hidden) if expand != 1 else []
        layers += _conv_bn(hidden, hidden, 3, stride, groups=hidden) + _conv_bn(hidden, cout, act=False)
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.block(x) if self.residual else self.block(x)


class MobileNetV2Cifar(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        layers, cin = _conv_bn(3, 32, 3), 32
        for t, c, n, s in _STAGES:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        self.features = nn.Sequential(*layers, *_conv_bn(cin, 1280))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(1280, num_classes)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))


@register_model("mobilenetv2_cifar")
def mobilenetv2_cifar(num_classes: int = 10) -> MobileNetV2Cifar:
    """MobileNetV2 for CIFAR-sized inputs."""
    return MobileNetV2Cifar(num_classes)
