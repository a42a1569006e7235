"""A small CNN for scikit-learn's digits (3x16x16 inputs, as the pipeline feeds them): the
default model of ``surgery run``. Trains to about 0.98 test accuracy in seconds on CPU."""
from __future__ import annotations

import torch.nn as nn

from surgery.models.registry import register_model

__all__ = ["DigitsNet", "digits_cnn"]


def _block(cin: int, cout: int) -> list:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class DigitsNet(nn.Module):
    def __init__(self, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(*_block(3, w), *_block(w, w), nn.MaxPool2d(2),
                                      *_block(w, 2 * w), *_block(2 * w, 2 * w), nn.MaxPool2d(2),
                                      *_block(2 * w, 4 * w))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(4 * w, num_classes)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))


@register_model("digits_cnn")
def digits_cnn(num_classes: int = 10, width: int = 32) -> DigitsNet:
    """Five 3x3 conv layers with BatchNorm, two max-pools, global pooling, one linear layer."""
    return DigitsNet(num_classes, width)
