"""VGG-16 with BatchNorm for 32x32 inputs (the CIFAR variant used in pruning papers:
13 conv layers, one 512->num_classes classifier)."""
from __future__ import annotations

import torch.nn as nn

from surgery.models.registry import register_model

__all__ = ["VGG", "vgg16_bn"]

_CFG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


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


@register_model("vgg16_bn")
def vgg16_bn(num_classes: int = 10) -> VGG:
    return VGG(_CFG16, num_classes)
