"""Calibration cost of the data criteria: state size and time relative to a plain pass.

For each criterion: bytes of statistics it holds after calibration, and its calibration
time divided by the time of the same batches through a plain forward (no grad), or
forward + backward of the summed cross-entropy for criteria that need gradients.

    python benchmarks/calibration.py [--model resnet50] [--batches 16] [--batch-size 8] [--size 224]
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
import torchvision

import criteria

NAMES = ["taylor", "taylor_weight", "fisher", "lrp", "coverage", "apoz", "wanda", "ocap", "hrank"]


def plain(model, data, backward: bool) -> float:
    t = time.perf_counter()
    for x, y in data:
        if backward:
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y, reduction="sum").backward()
        else:
            with torch.no_grad():
                model(x)
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet50")
    p.add_argument("--batches", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--criteria", default=",".join(NAMES))
    args = p.parse_args()
    torch.manual_seed(0)
    model = torchvision.models.get_model(args.model, weights=None).eval()
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(args.batch_size, 3, args.size, args.size, generator=g),
             torch.randint(0, 1000, (args.batch_size,), generator=g)) for _ in range(args.batches)]
    base = {False: plain(model, data, False), True: plain(model, data, True)}
    print(f"{args.model}, {args.batches} batches of {args.batch_size} at {args.size}x{args.size}, "
          f"{torch.get_num_threads()} threads; plain forward {base[False]:.1f} s, forward+backward {base[True]:.1f} s")
    print(f"{'criterion':<15}{'state bytes':>14}{'time s':>9}{'vs plain':>10}  baseline")
    for name in args.criteria.split(","):
        crit = criteria.get(name)
        t = time.perf_counter()
        crit.calibrate(model, data)
        elapsed = time.perf_counter() - t
        grad = crit.needs_gradients or name == "lrp"
        print(f"{name:<15}{crit.state_bytes:>14,}{elapsed:>9.1f}{elapsed / base[grad]:>9.2f}x  "
              f"{'forward+backward' if grad else 'forward'}", flush=True)


if __name__ == "__main__":
    main()
