"""Class-aware pruning (OCAP) for a subset of classes: the classifier is reduced to the
kept classes, channels are ranked by how often they matter for those classes (``mode: target`` removes
exactly the ratio, as the class-aware project's "prune to 85%" does), and every
metric (per-class accuracy, parameters, FLOPs, latency, size on disk) is measured.

    python examples/class_aware_ocap.py [--classes 3,5,7] [--ratio 0.5] [--epochs 15]
"""
from __future__ import annotations

import argparse

from surgery.pipeline import resolve, run


def main(argv: list | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--classes", default="3,5,7")
    p.add_argument("--ratio", type=float, default=0.5, help="fraction of each group's channels to remove")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--out", default="runs/ocap")
    args = p.parse_args(argv)
    cfg = resolve(env={}, overrides=[
        f"data.classes=[{args.classes}]", "prune.criterion=ocap", "prune.criterion_options={mode: target}",
        f"prune.ratio={args.ratio}",
        f"train.epochs={args.epochs}", f"finetune.epochs={max(1, 2 * args.epochs // 3)}", f"out={args.out}"])
    result = run(cfg)
    m = result.metrics
    o, q = m["original"], m["pruned"]
    print(f"classifier: {result.model.classifier.out_features} outputs (classes {args.classes})")
    for i, name in enumerate(m["class_names"]):
        print(f"class {name}: {o['per_class_accuracy'][i]:.3f} -> {q['per_class_accuracy'][i]:.3f}")
    for key in ("accuracy", "params", "flops", "size_bytes"):
        print(f"{key}: {o[key]:,} -> {q[key]:,}" if key != "accuracy" else f"{key}: {o[key]:.4f} -> {q[key]:.4f}")
    if "latency_ms" in q:
        print(f"latency batch 1: {o['latency_ms']['1']['median_ms']:.2f} -> {q['latency_ms']['1']['median_ms']:.2f} ms")
    return m


if __name__ == "__main__":
    main()
