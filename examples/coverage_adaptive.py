"""Coverage pruning with adaptive iterative steps and a report (the CleanAI workflow:
``--criterion coverage --global-pruning --adaptive --iterative-steps N``).

"Adaptive" means the coverage is recomputed on the current model before every step, which
the Pruner always does; the pipeline fine-tunes between steps and writes report.html/pdf.

    python examples/coverage_adaptive.py [--steps 3] [--ratio 0.5] [--epochs 15] [--out runs/coverage]
"""
from __future__ import annotations

import argparse

from surgery.pipeline import resolve, run


def main(argv: list | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--epochs", type=int, default=15, help="training epochs (fine-tuning uses 2/3 of them)")
    p.add_argument("--out", default="runs/coverage")
    args = p.parse_args(argv)
    cfg = resolve(env={}, overrides=[
        "prune.criterion=coverage", "prune.global_pruning=true", f"prune.ratio={args.ratio}",
        f"prune.iterative_steps={args.steps}", "prune.epochs_between=1", f"train.epochs={args.epochs}",
        f"finetune.epochs={max(1, 2 * args.epochs // 3)}", f"out={args.out}"])
    result = run(cfg)
    m = result.metrics
    for s in m["steps"]:
        print(f"step {s['step']}: {s['flops']:.1%} of FLOPs, accuracy {s['accuracy']:.4f} before fine-tuning")
    print(f"accuracy {m['original']['accuracy']:.4f} -> {m['pruned']['accuracy']:.4f}; "
          f"report: {result.out / 'report.html'}")
    return m


if __name__ == "__main__":
    main()
