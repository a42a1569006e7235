"""Prune on a device (CUDA by default): devices kept, verification there, Surgeon; prints a table.

    python benchmarks/device_check.py [--device cuda|cpu]
"""
from __future__ import annotations

import argparse
import time
import warnings

import torch
import torchvision

import surgery


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    dev = torch.device(p.parse_args().device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device (use --device cpu)")
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    where = torch.cuda.get_device_name() if dev.type == "cuda" else "CPU"
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, {where}")
    warnings.simplefilter("ignore")
    for name in ("resnet18", "mobilenet_v2", "densenet121", "vit_b_16"):
        torch.manual_seed(0)
        model = torchvision.models.get_model(name, weights=None).eval().to(dev)
        x = torch.randn(2, 3, 224, 224, device=dev)
        sync()
        t = time.perf_counter()
        pruned = surgery.prune(model, x, ratio=0.5)
        sync()
        elapsed = time.perf_counter() - t
        devices = {p.device.type for p in pruned.parameters()} | {b.device.type for b in pruned.buffers()}
        with torch.no_grad():
            shape_ok = pruned(x).shape == model(x).shape
        print(f"{name:<14} prune {elapsed:6.2f} s  devices {sorted(devices)}  shape ok {shape_ok}  "
              f"{pruned.surgery_verification}"[:200])
    model = torchvision.models.resnet18(weights=None).eval().to(dev)
    s = surgery.Surgeon(model, torch.randn(1, 3, 64, 64, device=dev))
    s.prune_layer(model.layer1[0].conv1, 0.5)
    print("surgeon        layer1.0.conv1 ->", model.layer1[0].conv1.out_channels, model.layer1[0].conv1.weight.device,
          s.verification)


if __name__ == "__main__":
    main()
