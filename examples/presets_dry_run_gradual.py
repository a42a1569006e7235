"""Presets, a dry run, and a gradual schedule (the pruner-module workflow): look at what a
preset would do before doing it, then reach the budget in several steps with an
exponential schedule, fine-tuning after each.

    python examples/presets_dry_run_gradual.py [--preset balanced] [--steps 4] [--epochs 10]
"""
from __future__ import annotations

import argparse

import torch

import surgery
from surgery.models import create
from surgery.pipeline import resolve
from surgery.pipeline.data import load
from surgery.pipeline.training import evaluate_accuracy, fit


def main(argv: list | None = None) -> list:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="balanced", choices=["conservative", "balanced", "aggressive"])
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--epochs", type=int, default=10)
    args = p.parse_args(argv)
    cfg = resolve(preset=args.preset, env={}, overrides=[f"train.epochs={args.epochs}"])
    torch.manual_seed(cfg.seed)
    data = load(cfg.data, cfg.seed)
    model = create("digits_cnn", num_classes=data.num_classes)
    cpu = torch.device("cpu")
    fit(model, data, cfg.train, stage="train", device=cpu, seed=cfg.seed, batch_size=cfg.data.batch_size)
    example = torch.zeros(1, *data.input_shape)
    keep = cfg.prune.target_flops
    print(f"preset {args.preset}: keep {keep:.0%} of FLOPs")

    dry = surgery.Pruner(model, example, target_flops=keep)
    print(dry.plan().summary())          # dry run: which channels would go, nothing changes
    print(dry.preview())                 # dry run: per-layer channels, params and FLOPs before/after

    pruner = surgery.Pruner(model, example, target_flops=keep, iterative_steps=args.steps, schedule="exponential")
    between = type(cfg.finetune)(epochs=1, lr=0.01, warmup_epochs=0.0)
    history = []
    for step, small in enumerate(pruner.steps(), 1):
        acc = evaluate_accuracy(small, data.test, cpu)
        fit(small, data, between, stage=f"step {step}", device=cpu, seed=step, batch_size=cfg.data.batch_size)
        history.append((step, sum(q.numel() for q in small.parameters()), acc, evaluate_accuracy(small, data.test, cpu)))
        print(f"step {step}: {history[-1][1]:,} params, accuracy {acc:.4f} -> {history[-1][3]:.4f} after 1 epoch")
    return history


if __name__ == "__main__":
    main()
