"""Pruning whole detectors and segmenters: no backbone surgery, no ignored layers.

A detector's forward branches on data (anchors, proposals, NMS, a loop over images), so
neither torch.fx nor torch.export holds it in one graph. The default tracer then records the
forward as it runs on the example inputs (``tracer="run"``: the aten ops executed, with the
module that ran each) and reads channels from that. Layers that make the outputs (class
logits, box deltas) keep their channels by themselves; FPN channels, shared head convs and
GroupNorm groups are pruned; the pruned model is still a ``FasterRCNN`` and its detections
equal the original's with the removed channels masked (verified on the example images).
Give example images that yield detections (random weights: a score threshold of 0), so that
verification compares them.

    python examples/detection.py
"""
from __future__ import annotations

import warnings

import torch
from torchvision.models import detection, segmentation

import surgery
from surgery.metrics import count_params


def prune_detector(name: str = "fasterrcnn_mobilenet_v3_large_320_fpn", ratio: float = 0.5) -> dict:
    torch.manual_seed(0)
    model = getattr(detection, name)(weights=None, weights_backbone=None, box_score_thresh=0.0).eval()
    images = ([torch.rand(3, 240, 320), torch.rand(3, 320, 240)],)  # two images, two sizes
    small = surgery.prune(model, images, ratio=ratio, tracer="run")
    with torch.no_grad():
        out = small(*images)
    print(f"{name}: {count_params(model):,} -> {count_params(small):,} params, {type(small).__name__}; "
          f"{small.surgery_verification}")
    return {"params": (count_params(model), count_params(small)), "keys": sorted(out[0]), "type": type(small),
            "exact": small.surgery_verification.exact}


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
    prune_segmenter()
