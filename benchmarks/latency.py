"""Latency of pruned torchvision models: ratios 0.3 / 0.5 / 0.7, with and without
``round_to=8``, at batch 1 and 32, median of repeated forwards after warm-up.

    python benchmarks/latency.py [--models resnet18,resnet50,mobilenet_v2] [--device cpu|cuda] [--threads 2]
"""
from __future__ import annotations

import argparse
import warnings

import torch
import torchvision

import surgery
from surgery.pipeline.measure import latency


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet18,resnet50,mobilenet_v2")
    p.add_argument("--ratios", default="0.3,0.5,0.7")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    device = torch.device(args.device)
    label = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} threads"
    print(f"device: {label}\n")
    print("| model | ratio | round_to | params | batch 1 ms | speed-up | batch 32 ms | speed-up |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in args.models.split(","):
        torch.manual_seed(0)
        model, x = torchvision.models.get_model(name, weights=None).eval(), torch.randn(1, 3, 224, 224)
        base = latency(model.to(device), (3, 224, 224), [1, 32], args.repeats, 3, device)
        print(f"| {name} | 0 | | {sum(q.numel() for q in model.parameters()):,} | {base['1']['median_ms']:.1f} | 1.00 | "
              f"{base['32']['median_ms']:.1f} | 1.00 |", flush=True)
        for ratio in (float(r) for r in args.ratios.split(",")):
            for round_to in (None, 8):
                small = surgery.Pruner(model.cpu(), x, ratio=ratio, round_to=round_to, verify=False).run().to(device)
                t = latency(small, (3, 224, 224), [1, 32], args.repeats, 3, device)
                b1, b32 = t["1"]["median_ms"], t["32"]["median_ms"]
                print(f"| {name} | {ratio} | {round_to or ''} | {sum(q.numel() for q in small.parameters()):,} | "
                      f"{b1:.1f} | {base['1']['median_ms'] / b1:.2f} | {b32:.1f} | {base['32']['median_ms'] / b32:.2f} |",
                      flush=True)


if __name__ == "__main__":
    main()
