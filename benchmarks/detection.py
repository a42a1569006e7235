"""Whole torchvision detectors and segmenters: how deep surgery.prune goes, exactly, against Torch-Pruning.

Random weights (``weights=None, weights_backbone=None``), score thresholds at 0 so that every
image yields detections to compare, images resized to ``--min-size``, a batch of two images of
different sizes, ratio 0.5, L1. Ours: the default tracer (fx, then torch.export, then a recorded
run), no ignored layers, verification on (float64): the fraction of parameters kept, whether the
outputs equal the masked original, and the seconds. Torch-Pruning (optional, ``pip install
torch-pruning``, run in float64): group L1 at the same ratio with the output layers ignored, as its examples do
per family (it needs them; we do not); its pruned model is run on the same images and, where
our test oracle can line its layers up with the original's, compared with the original with
the removed channels' weights zeroed (``surgery.testing.max_error``).

    python benchmarks/detection.py [--models fasterrcnn_mobilenet_v3_large_320_fpn,...] [--min-size 320]
"""
from __future__ import annotations

import argparse
import copy
import time
import warnings

import torch
import torchvision
from torchvision.models import detection, segmentation

import surgery
from surgery.testing import max_error, randomize

DETECTORS = ["fasterrcnn_mobilenet_v3_large_320_fpn", "retinanet_resnet50_fpn", "fcos_resnet50_fpn",
             "ssdlite320_mobilenet_v3_large", "maskrcnn_resnet50_fpn", "keypointrcnn_resnet50_fpn"]
SEGMENTERS = ["deeplabv3_resnet50", "fcn_resnet50", "lraspp_mobilenet_v3_large"]
# what Torch-Pruning must be told to leave alone (the layers that make the model's outputs)
TP_OUTPUTS = {"fasterrcnn": ["rpn.head.cls_logits", "rpn.head.bbox_pred", "roi_heads.box_predictor"],
              "maskrcnn": ["rpn.head.cls_logits", "rpn.head.bbox_pred", "roi_heads.box_predictor",
                           "roi_heads.mask_predictor.mask_fcn_logits"],
              "keypointrcnn": ["rpn.head.cls_logits", "rpn.head.bbox_pred", "roi_heads.box_predictor",
                               "roi_heads.keypoint_predictor"],
              "retinanet": ["head.classification_head.cls_logits", "head.regression_head.bbox_reg"],
              "fcos": ["head.classification_head.cls_logits", "head.regression_head.bbox_reg",
                       "head.regression_head.bbox_ctrness"],
              "ssdlite": ["head.classification_head", "head.regression_head"],
              "deeplabv3": ["classifier.4"], "fcn": ["classifier.4"], "lraspp": ["classifier.low_classifier",
                                                                                "classifier.high_classifier"]}


def build(name: str, min_size: int) -> torch.nn.Module:
    torch.manual_seed(0)
    if name in SEGMENTERS:
        model = getattr(segmentation, name)(weights=None, weights_backbone=None, num_classes=21)
    else:
        keep = {"box_score_thresh": 0.0} if "rcnn" in name else {"score_thresh": 0.0}
        size = {} if name.startswith("ssd") else {"min_size": min_size, "max_size": min_size * 4 // 3}
        model = getattr(detection, name)(weights=None, weights_backbone=None, **keep, **size)
    return randomize(model.eval())


def inputs(name: str, min_size: int) -> tuple:
    gen = torch.Generator().manual_seed(0)
    if name in SEGMENTERS:
        return (torch.rand(1, 3, min_size, min_size, generator=gen),)
    return ([torch.rand(3, min_size, min_size * 4 // 3, generator=gen),
             torch.rand(3, min_size * 4 // 3, min_size, generator=gen)],)


def params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def ours(name: str, min_size: int) -> dict:
    model, x = build(name, min_size), inputs(name, min_size)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        small = surgery.prune(model, x, ratio=0.5)
    seconds = time.perf_counter() - start
    v = small.surgery_verification
    return {"kept": params(small) / params(model), "exact": bool(v.exact), "error": v.max_error,
            "seconds": seconds}


def theirs(name: str, min_size: int) -> dict:
    try:
        import torch_pruning as tp
    except ImportError:
        return {"tp": "not installed"}
    model = build(name, min_size).double()  # float64: the oracle lines layers up by their values
    x = tuple([t.double() for t in a] if isinstance(a, list) else a.double() for a in inputs(name, min_size))
    family = name.split("_")[0].replace("320", "")
    ignored = [model.get_submodule(p) for p in TP_OUTPUTS.get(family, [])]
    original = copy.deepcopy(model)
    start = time.perf_counter()
    try:
        pruner = tp.pruner.MetaPruner(model, x, importance=tp.importance.MagnitudeImportance(p=1),
                                      pruning_ratio=0.5, ignored_layers=ignored)
        pruner.step()
    except Exception as err:  # noqa: BLE001  (reported in the table)
        return {"tp": f"fails: {type(err).__name__}"}
    seconds = time.perf_counter() - start
    row = {"tp_kept": params(model) / params(original), "tp_seconds": seconds}
    try:
        with torch.no_grad():
            model(*x)
    except Exception as err:  # noqa: BLE001  (reported in the table)
        return {**row, "tp_runs": f"no ({type(err).__name__})"}
    try:
        row["tp_error"] = f"{max_error(original, model, x):.1e}"
    except Exception as err:  # noqa: BLE001  our oracle cannot line up its layers with the original's
        row["tp_error"] = f"not comparable ({type(err).__name__})"
    return {**row, "tp_runs": "yes"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(DETECTORS + SEGMENTERS))
    p.add_argument("--min-size", type=int, default=320)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}; ratio 0.5, L1, min_size {args.min_size}\n")
    print("| model | ours: params kept | ours: pruned == masked original | ours: seconds | "
          "Torch-Pruning: params kept | TP: pruned model runs | TP: error vs zeroed original | TP: seconds |")
    print("|---|---:|---|---:|---:|---|---:|---:|")
    for name in args.models.split(","):
        row = {**ours(name, args.min_size), **theirs(name, args.min_size)}
        tp_kept = f"{row['tp_kept']:.1%}" if "tp_kept" in row else row.get("tp", "")
        tp_sec = f"{row['tp_seconds']:.1f}" if "tp_seconds" in row else ""
        print(f"| {name} | {row['kept']:.1%} | {'yes' if row['exact'] else 'no'} ({row['error']:.1e}) | "
              f"{row['seconds']:.1f} | {tp_kept} | {row.get('tp_runs', '')} | {row.get('tp_error', '')} | "
              f"{tp_sec} |", flush=True)

if __name__ == "__main__":
    main()
