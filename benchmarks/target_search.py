"""Target-FLOPs search: time of ``Pruner(model, x, target_flops=t).run()`` (verify off) and
how close the pruned model's fvcore FLOPs land, on torchvision models at 224x224.

    python benchmarks/target_search.py [--models resnet50,mobilenet_v2] [--targets 0.5,0.3] [--threads 1]
"""
from __future__ import annotations

import argparse
import time
import warnings

import torch
import torchvision

import surgery
from surgery.metrics import count_flops


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet50,mobilenet_v2,densenet121,efficientnet_b0")
    p.add_argument("--targets", default="0.5,0.3")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    print("| model | target | seconds | FLOPs kept | miss |\n|---|---:|---:|---:|---:|")
    for name in args.models.split(","):
        torch.manual_seed(0)
        model, x = torchvision.models.get_model(name, weights=None).eval(), torch.randn(1, 3, 224, 224)
        f0 = count_flops(model, x)
        for target in (float(t) for t in args.targets.split(",")):
            t0 = time.perf_counter()
            small = surgery.Pruner(model, x, target_flops=target, verify=False).run()
            seconds = time.perf_counter() - t0
            kept = count_flops(small, x) / f0
            print(f"| {name} | {target} | {seconds:.2f} | {kept:.4f} | {kept - target:+.4f} |", flush=True)


if __name__ == "__main__":
    main()
