"""Scoring layers with criteria, no engine: pick filters in your own pipeline.

    python examples/criteria_standalone.py
"""
from __future__ import annotations

import torch
import torchvision

import criteria


def main() -> dict:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)
    conv = model.layer2[0].conv1
    picks = {}
    for name in ("l1", "l2", "fpgm", "random"):
        crit = criteria.get(name)
        picks[name] = crit.prune_indices(conv, ratio=0.25)       # the 25% to remove
    picks["kmeans"] = criteria.get("kmeans", k=4).prune_indices(conv, 0.25)
    picks["bn_scale"] = criteria.BNScale().prune_indices(model.layer2[0].bn1, 0.25)
    scores = criteria.get("l1", normalize="lamp").score(conv)    # LAMP-normalised L1
    print(f"{conv}: {conv.out_channels} filters")
    for name, idx in picks.items():
        print(f"  {name:<8} removes {len(idx)}: {idx[:8].tolist()} ...")
    print(f"  LAMP-normalised L1: max {scores.max():.3f}, min {scores.min():.4f}")
    return picks


if __name__ == "__main__":
    main()
