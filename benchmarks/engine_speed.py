"""Trace and prune time of the engine on torchvision models at 224x224 (float32, CPU).

    python benchmarks/engine_speed.py [--models resnet50,vgg16_bn] [--ratio 0.5] [--repeat 3]

Columns: trace = surgery.trace; prune = the whole surgery.prune call (its own trace,
scoring, rewrite and verification, the default); no verify = the same with verify=False
(output shapes checked only); overhead = prune / no verify - 1; best of --repeat runs.
"""
from __future__ import annotations

import argparse
import time
import warnings

import torch
import torchvision

import surgery
from surgery.metrics import count_params

DEFAULT = ["resnet18", "resnet50", "vgg16_bn", "mobilenet_v2", "mobilenet_v3_small", "densenet121",
           "resnext50_32x4d", "googlenet", "efficientnet_b0", "regnet_y_400mf"]
EXTRA = {"googlenet": {"aux_logits": False, "init_weights": False}}


def best_of(repeat: int, fn) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(DEFAULT))
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    torch.manual_seed(0)
    x = torch.randn(1, 3, 224, 224)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, ratio {args.ratio}")
    print(f"{'model':<20}{'trace s':>9}{'prune s':>9}{'no verify s':>13}{'overhead':>10}"
          f"{'params before':>15}{'params after':>14}")
    for name in args.models.split(","):
        model = torchvision.models.get_model(name, weights=None, **EXTRA.get(name, {})).eval()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t_trace, _ = best_of(args.repeat, lambda: surgery.trace(model, x))
            t_prune, pruned = best_of(args.repeat, lambda: surgery.prune(model, x, ratio=args.ratio))
            t_fast, _ = best_of(args.repeat, lambda: surgery.prune(model, x, ratio=args.ratio, verify=False))
        print(f"{name:<20}{t_trace:>9.2f}{t_prune:>9.2f}{t_fast:>13.2f}{t_prune / t_fast - 1:>10.0%}"
              f"{count_params(model):>15,}{count_params(pruned):>14,}")


if __name__ == "__main__":
    main()
