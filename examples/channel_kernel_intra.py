"""Channel vs kernel vs intra-kernel pruning at the same ratio, with a plot.

- channel: whole filters removed (``surgery.prune``): the model is smaller and faster;
- kernel: whole k x k kernels zeroed (masks, ``granularity="kernel"``): same shapes;
- intra-kernel: the smallest positions inside every kernel zeroed (``granularity="pattern"``).

Each is fine-tuned for the same number of epochs (masks stay applied while training), then
accuracy, non-zero weights and CPU latency are compared.

    python examples/channel_kernel_intra.py [--ratio 0.5] [--epochs 10] [--plot comparison.png]
"""
from __future__ import annotations

import argparse
import copy

import torch

import surgery
from surgery.models import create
from surgery.pipeline.config import DataSection, TrainSection
from surgery.pipeline.data import load
from surgery.pipeline.measure import latency
from surgery.pipeline.training import evaluate_accuracy, fit
from surgery.reporting.plots import pyplot
from surgery.sparsity import make_permanent, sparsify


def nonzero(model: torch.nn.Module) -> int:
    return sum(int(torch.count_nonzero(p)) for p in model.parameters())


def main(argv: list | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--plot", default="comparison.png")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    data, cpu = load(DataSection(), 0), torch.device("cpu")
    base = create("digits_cnn")
    fit(base, data, TrainSection(epochs=args.epochs), stage="train", device=cpu, seed=0, batch_size=64)
    example = torch.zeros(1, *data.input_shape)
    variants = {"channel": surgery.prune(base, example, ratio=args.ratio)}
    for name, granularity in (("kernel", "kernel"), ("intra-kernel", "pattern")):
        variants[name] = copy.deepcopy(base)
        sparsify(variants[name], args.ratio, granularity=granularity)  # masks, in place
    tune = TrainSection(epochs=max(1, args.epochs // 2), lr=0.01, warmup_epochs=0.0)
    results = {"unpruned": (evaluate_accuracy(base, data.test, cpu), nonzero(base),
                            latency(base, data.input_shape, [32], 10, 2)["32"]["median_ms"])}
    for name, model in variants.items():
        fit(model, data, tune, stage=name, device=cpu, seed=1, batch_size=64)
        model = make_permanent(model) if name != "channel" else model
        results[name] = (evaluate_accuracy(model, data.test, cpu), nonzero(model),
                         latency(model, data.input_shape, [32], 10, 2)["32"]["median_ms"])
    for name, (acc, nz, ms) in results.items():
        print(f"{name:13} accuracy {acc:.4f}  non-zero weights {nz:>8,}  latency (batch 32) {ms:6.2f} ms")
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    names = list(results)
    for ax, (i, label) in zip(axes, enumerate(["accuracy", "non-zero weights", "latency, batch 32 (ms)"])):
        ax.bar(names, [results[n][i] for n in names], color=["#9aa5b1", "#2a7ab0", "#6c9a8b", "#d1495b"])
        ax.set_title(label)
        ax.tick_params(axis="x", rotation=20, labelsize=8)
    axes[0].set_ylim(min(r[0] for r in results.values()) - 0.05, 1.0)
    fig.suptitle(f"Channel vs kernel vs intra-kernel pruning at ratio {args.ratio} (after fine-tuning)")
    fig.tight_layout()
    fig.savefig(args.plot, dpi=120)
    print(f"plot: {args.plot}")
    return results


if __name__ == "__main__":
    main()
