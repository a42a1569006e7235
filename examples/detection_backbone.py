"""Pruning a detection model's backbone (recipe), and a segmentation model whole.

Detection models are not fx-traceable end to end (their forward branches on the
data), but their backbone is an ordinary module: prune it in place. Its outputs (the
FPN levels or SSD feature maps) reach the backbone's output, so their channels are
kept and the heads still fit.

    python examples/detection_backbone.py
"""
from __future__ import annotations

import warnings

import torch
from torchvision.models import detection, segmentation

import surgery
from surgery.metrics import count_params


def prune_detector(name: str = "fasterrcnn_mobilenet_v3_large_fpn", ratio: float = 0.5) -> dict:
    torch.manual_seed(0)
    model = getattr(detection, name)(weights=None, weights_backbone=None).eval()
    before = count_params(model)
    surgery.prune(model.backbone, torch.randn(1, 3, 320, 320), ratio=ratio, inplace=True)
    with torch.no_grad():
        out = model([torch.rand(3, 320, 320)])[0]
    print(f"{name}: {before:,} -> {count_params(model):,} params; detections: {sorted(out)}")
    return {"params": (before, count_params(model)), "keys": sorted(out)}


def prune_segmenter(name: str = "lraspp_mobilenet_v3_large", ratio: float = 0.5) -> dict:
    torch.manual_seed(0)
    model = getattr(segmentation, name)(weights=None, weights_backbone=None).eval()
    x = torch.randn(1, 3, 128, 128)
    pruned = surgery.prune(model, x, ratio=ratio)
    with torch.no_grad():
        shapes = {k: tuple(v.shape) for k, v in pruned(x).items()}
    print(f"{name}: {count_params(model):,} -> {count_params(pruned):,} params; outputs {shapes}")
    return {"params": (count_params(model), count_params(pruned)), "shapes": shapes}


if __name__ == "__main__":
    warnings.simplefilter("ignore")
    prune_detector()
    prune_detector("ssdlite320_mobilenet_v3_large")
    prune_segmenter()
