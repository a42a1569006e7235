"""VGG-11/13/16/19 with BatchNorm for 32x32 inputs (the CIFAR variants used in pruning papers:
conv layers, then one 512->num_classes classifier)."""
from __future__ import annotations

import torch.nn as nn

from surgery.models.registry import register_model

__all__ = ["VGG", "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn"]

_CFGS = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


class VGG(nn.Module):
    def __init__(self, cfg: list, num_classes: int = 10) -> None:
        super().__init__()
        layers, cin = [], 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                cin = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


@register_model("vgg11_bn")
def vgg11_bn(num_classes: int = 10) -> VGG:
    """CIFAR VGG-11 with BatchNorm (32x32 inputs; five 2x2 max-pools)."""
    return VGG(_CFGS[11], num_classes)


@register_model("vgg13_bn")
def vgg13_bn(num_classes: int = 10) -> VGG:
    """CIFAR VGG-13 with BatchNorm (32x32 inputs; five 2x2 max-pools)."""
    return VGG(_CFGS[13], num_classes)


@register_model("vgg16_bn")
def vgg16_bn(num_classes: int = 10) -> VGG:
    """CIFAR VGG-16 with BatchNorm (32x32 inputs; five 2x2 max-pools)."""
    return VGG(_CFGS[16], num_classes)


@register_model("vgg19_bn")
def vgg19_bn(num_classes: int = 10) -> VGG:
    """CIFAR VGG-19 with BatchNorm (32x32 inputs; five 2x2 max-pools)."""
    return VGG(_CFGS[19], num_classes)
