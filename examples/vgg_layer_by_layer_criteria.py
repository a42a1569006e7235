"""CIFAR VGG-16-BN pruned layer by layer with three criteria: L1, k-means clustering and
Taylor (the MIC-engine flow: one ``prune_layer`` call per conv, the BatchNorm and the next
layer follow, the model is valid after every call). Data criteria calibrate on ``data=``
once and are recalibrated automatically when the model has changed.

    python examples/vgg_layer_by_layer_criteria.py [--ratio 0.3] [--batches 4]
"""
from __future__ import annotations

import argparse
import copy

import torch

import surgery
from surgery.models import create
from surgery.pipeline.config import DataSection
from surgery.pipeline.data import load, loader


def prune_every_conv(model: torch.nn.Module, example, criterion: str, ratio: float, data=None,
                     batches: int = 4) -> torch.nn.Module:
    surgeon = surgery.Surgeon(model, example)
    convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    for name in convs:
        options = {"data": data, "max_batches": batches} if data is not None else {}
        surgeon.prune_layer(name, ratio, criterion=criterion, **options)
    return surgeon.model


def main(argv: list | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ratio", type=float, default=0.3)
    p.add_argument("--batches", type=int, default=4, help="calibration batches for taylor")
    p.add_argument("--model", default="vgg16_bn", help="a CIFAR VGG from surgery.models (vgg11_bn ... vgg19_bn)")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    model = create(args.model, num_classes=10).eval()
    example = torch.zeros(1, 3, 32, 32)
    data = loader(load(DataSection(image_size=32, augment=False), 0).calibration, 32)
    out = {}
    for criterion in ("l1", "kmeans", "taylor"):
        small = prune_every_conv(copy.deepcopy(model), example, criterion, args.ratio,
                                 data if criterion == "taylor" else None, args.batches)
        channels = [m.out_channels for m in small.modules() if isinstance(m, torch.nn.Conv2d)]
        out[criterion] = channels
        params = sum(q.numel() for q in small.parameters())
        print(f"{criterion:7} conv channels {channels}  params {params:,}")
    return out


if __name__ == "__main__":
    main()
