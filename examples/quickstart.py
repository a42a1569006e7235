"""End-to-end pruning on bundled data: train, prune half the channels, fine-tune.

Uses scikit-learn's bundled 8x8 digits (upsampled to 16x16, 3 channels) and the
CIFAR-style ResNet-20 from ``models``, so it runs offline on CPU (README has the time).

    python examples/quickstart.py [--epochs 12] [--ratio 0.5]
"""
from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from tqdm.auto import tqdm

import surgery
from models import create
from surgery.metrics import count_flops, count_params


def digits_tensors(seed: int = 0, size: int = 16):
    """Digits as 3 x size x size images in [-1, 1], split 75/25."""
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32) / 8.0 - 1.0
    x = F.interpolate(x[:, None], size=size, mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    y = torch.tensor(digits.target)
    idx_train, idx_test = train_test_split(np.arange(len(y)), test_size=0.25, random_state=seed, stratify=y)
    return (x[idx_train], y[idx_train]), (x[idx_test], y[idx_test])


def train(model: nn.Module, data, epochs: int, lr: float = 0.1, batch: int = 64, desc: str = "training") -> None:
    """SGD with a one-cycle schedule (warm-up, then cosine down); a tqdm bar per run."""
    x, y = data
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    steps = epochs * ((len(y) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    gen = torch.Generator().manual_seed(0)
    model.train()
    with tqdm(total=steps, desc=desc, unit="step", leave=False) as bar:
        for _ in range(epochs):
            for idx in torch.randperm(len(y), generator=gen).split(batch):
                opt.zero_grad()
                loss = F.cross_entropy(model(x[idx]), y[idx])
                loss.backward()
                opt.step()
                sched.step()
                bar.set_postfix(loss=f"{loss.item():.3f}")
                bar.update()


@torch.no_grad()
def accuracy(model: nn.Module, data) -> float:
    x, y = data
    model.eval()
    return float((model(x).argmax(1) == y).float().mean())


def main(argv: list | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--ratio", type=float, default=0.5)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    train_set, test_set = digits_tensors()
    model = create("resnet20", num_classes=10)
    start = time.perf_counter()
    train(model, train_set, args.epochs, desc="training")
    example = torch.randn(1, 3, 16, 16)
    print("pruning (trace, L1 selection, rewrite, verification) ...")
    pruned = surgery.prune(model, example, ratio=args.ratio, criterion="l1")
    acc_pruned = accuracy(pruned, test_set)
    train(pruned, train_set, args.epochs, lr=0.02, desc="fine-tuning")
    result = {
        "params": (count_params(model), count_params(pruned)),
        "flops": (count_flops(model, example), count_flops(pruned, example)),
        "accuracy": (accuracy(model, test_set), acc_pruned, accuracy(pruned, test_set)),
    }
    (p0, p1), (f0, f1), (a0, a1, a2) = result["params"], result["flops"], result["accuracy"]
    print(f"ResNet-20 on digits, {args.ratio:.0%} of every prunable group's channels removed (L1)")
    print(f"  params   {p0:>10,} -> {p1:>10,}  ({p1 / p0:.1%} kept)")
    print(f"  FLOPs    {f0:>10,} -> {f1:>10,}  ({f1 / f0:.1%} kept)")
    print(f"  accuracy {a0:.3f} before, {a1:.3f} right after pruning, {a2:.3f} after fine-tuning")
    print(f"  {time.perf_counter() - start:.0f} s")
    return result


if __name__ == "__main__":
    warnings.simplefilter("ignore", UserWarning)
    main()
