"""Layer-by-layer pruning of torchvision's VGG-16-BN, two ways, giving identical models.

1. The classic manual flow: features[0] loses 10% of its filters by L1, then by hand
   features[1] (its BatchNorm) the same channels and features[3] the same input kernels.
2. The Surgeon: one call; the BatchNorm and the next conv follow automatically, and the
   model is valid after every call.

    python examples/layer_by_layer_vgg.py
"""
from __future__ import annotations

import copy

import torch
import torchvision

import criteria
import surgery


def manual_flow(model: torch.nn.Module, ratio: float) -> torch.nn.Module:
    f = model.features
    drop = criteria.L1Norm().prune_indices(f[0], ratio)          # lowest-L1 filters of features[0]
    f[0] = surgery.layers.remove_filters(f[0], drop)
    f[1] = surgery.layers.remove_bn(f[1], drop)
    f[3] = surgery.layers.remove_kernels(f[3], drop)
    return model


def surgeon_flow(model: torch.nn.Module, ratio: float, example: torch.Tensor) -> torch.nn.Module:
    surgeon = surgery.Surgeon(model, example)
    print(surgeon.group_of(model.features[0]))                   # what will be touched
    surgeon.prune_layer(model.features[0], ratio, criterion="l1")
    return surgeon.model


def main() -> bool:
    torch.manual_seed(0)
    model = torchvision.models.vgg16_bn(weights=None).eval()
    example = torch.randn(1, 3, 64, 64)
    by_hand = manual_flow(copy.deepcopy(model), 0.1)
    by_surgeon = surgeon_flow(copy.deepcopy(model), 0.1, example)
    same = all(torch.equal(a, b) for a, b in zip(by_hand.state_dict().values(), by_surgeon.state_dict().values()))
    with torch.no_grad():
        same = same and torch.equal(by_hand(example), by_surgeon(example))
    print(f"features[0]: {model.features[0].out_channels} -> {by_surgeon.features[0].out_channels} filters; "
          f"manual and Surgeon models identical: {same}")
    return same


if __name__ == "__main__":
    raise SystemExit(0 if main() else 1)
