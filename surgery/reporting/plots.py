"""The report's figures (matplotlib, Agg backend: no display needed). Each function takes a
:class:`surgery.Report` and returns a Figure, or None when the report lacks that data.
matplotlib is imported when a figure is drawn, so the core library works without it
(``pip install torch-surgery[report]``)."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["figures"]


def pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ImportError("report figures need matplotlib: pip install 'torch-surgery[report]'") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def figures(report) -> list[tuple[str, Any]]:
    """[(title, Figure)] for every figure the report has data for, in reading order."""
    makers = [("Channels per layer", channels_per_layer), ("Fraction pruned over depth", pruned_heatmap),
              ("Criterion scores per group", score_distributions), ("Per-class accuracy", per_class_accuracy),
              ("Training and fine-tuning", training_curves), ("Accuracy vs FLOPs", accuracy_vs_flops),
              ("Mean activation per channel", activation_heatmap)]
    out = []
    for title, make in makers:
        fig = make(report)
        if fig is not None:
            out.append((title, fig))
    return out


def _conv_linear(report) -> list:
    return [r for r in report.layers if r.type.startswith("Conv") or r.type == "Linear"]


def channels_per_layer(report, ax=None):
    """Bars of output channels before/after; drawn on ``ax`` when given (returns its figure)."""
    rows = _conv_linear(report)
    if not rows:
        return None
    plt = pyplot()
    n = len(rows)
    if ax is None:
        fig, ax = plt.subplots(figsize=(min(16, max(7, 0.28 * n + 2)), 4.2))
    else:
        fig = ax.figure
    x = np.arange(n)
    ax.bar(x - 0.2, [r.channels[0] for r in rows], 0.4, label="before", color="#9aa5b1")
    ax.bar(x + 0.2, [r.channels[1] for r in rows], 0.4, label="after", color="#2a7ab0")
    ax.set_ylabel("output channels")
    ax.set_xticks(x)
    ax.set_xticklabels([r.name for r in rows], rotation=90, fontsize=max(5, 9 - n // 15))
    ax.legend(frameon=False, loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=2, fontsize=8)
    ax.set_title("Output channels of each conv / linear layer, before and after", loc="left", fontsize=10)
    if len(fig.axes) == 1:
        fig.tight_layout()
    return fig


def pruned_heatmap(report):
    rows = _conv_linear(report)
    if not rows:
        return None
    plt = pyplot()
    frac = np.array([[1 - r.channels[1] / r.channels[0] if r.channels[0] else 0 for r in rows],
                     [1 - r.params[1] / r.params[0] if r.params[0] else 0 for r in rows]])
    fig, ax = plt.subplots(figsize=(10, 2.6))
    im = ax.imshow(frac, aspect="auto", cmap="viridis", vmin=0, vmax=1)
    ax.set_yticks([0, 1])
    ax.set_yticklabels(["channels", "parameters"])
    ax.set_xlabel("layer index (input to output; names in the channel chart)")
    fig.colorbar(im, ax=ax, label="fraction removed", fraction=0.04, pad=0.02)
    ax.set_title("Fraction removed per layer over the network's depth")
    fig.tight_layout()
    return fig


def score_distributions(report, limit: int = 12):
    scores = (report.insight or {}).get("scores") or {}
    removed = {g["anchor"]: g["removed"] for g in (report.insight or {}).get("groups", [])}
    names = [n for n in scores if len(scores[n]) > 1][:limit]
    if not names:
        return None
    plt = pyplot()
    cols = 4
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(12, 2.5 * rows + 0.6), squeeze=False)
    for i, (ax, name) in enumerate(zip(axes.flat, names)):
        s = np.sort(np.asarray(scores[name]))
        ax.hist(s, bins=min(30, max(5, len(s) // 2)), color="#2a7ab0")
        k = removed.get(name) or 0
        if 0 < k < len(s):
            ax.axvline((s[k - 1] + s[k]) / 2, color="#d1495b", lw=1.5)
        short = name if len(name) < 22 else "..." + name[-19:]
        ax.set_title(f"{short} ({k} of {len(s)} removed)", fontsize=8)  # in the title, not over the bars
        ax.set_xlabel("score", fontsize=7)
        if i % cols == 0:
            ax.set_ylabel("channels", fontsize=7)
        ax.tick_params(labelsize=7)
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    more = f" (first {limit} of {len(scores)})" if len(scores) > limit else ""
    fig.suptitle(f"{report.insight.get('criterion', '')} scores per group{more}; line: between the k-th and "
                 f"(k+1)-th lowest, k = channels removed", fontsize=9)
    fig.tight_layout()
    return fig


def per_class_accuracy(report):
    m = report.metrics or {}
    before, after = (m.get("original") or {}).get("per_class_accuracy"), (m.get("pruned") or {}).get("per_class_accuracy")
    if not after:
        return None
    plt = pyplot()
    names = m.get("class_names") or [str(i) for i in range(len(after))]
    x = np.arange(len(after))
    fig, ax = plt.subplots(figsize=(min(16, max(7, 0.35 * len(x) + 2)), 3.8))
    if before:
        ax.bar(x - 0.2, [b or 0 for b in before], 0.4, label="original", color="#9aa5b1")
    ax.bar(x + 0.2 if before else x, [a or 0 for a in after], 0.4, label="pruned", color="#2a7ab0")
    ax.set_ylim(0.0, 1.0)  # the whole scale: a cut axis makes small drops look large
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=90 if len(x) > 12 else 0, fontsize=8)
    ax.set_ylabel("accuracy")
    ax.set_xlabel("class")
    ax.legend(frameon=False, loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=2, fontsize=8)
    ax.set_title("Top-1 accuracy per class", loc="left")
    fig.tight_layout()
    return fig


def training_curves(report):
    rows = report.history or []
    if not rows:
        return None
    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.6))
    for stage in dict.fromkeys(r["stage"] for r in rows):
        part = [r for r in rows if r["stage"] == stage]
        ep = [int(r["epoch"]) for r in part]
        a.plot(ep, [float(r["loss"]) for r in part], marker=".", label=stage)
        acc = [float(r["val_acc"]) if r.get("val_acc") not in (None, "") else float(r["train_acc"]) for r in part]
        b.plot(ep, acc, marker=".", label=stage)
    a.set_xlabel("epoch")
    a.set_ylabel("training loss")
    b.set_xlabel("epoch")
    b.set_ylabel("validation accuracy" if any(r.get("val_acc") not in (None, "") for r in rows)
                 else "training accuracy")
    b.legend(frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside the data
    fig.suptitle("Loss and accuracy per epoch")
    fig.tight_layout()
    return fig


def accuracy_vs_flops(report):
    m = report.metrics or {}
    points = [(s["flops"], s["accuracy"], f"step {s['step']}") for s in (m.get("steps") or [])]
    if m.get("original") and m.get("pruned"):
        o, p = m["original"], m["pruned"]
        points = [(1.0, o["accuracy"], "original")] + points + [(p["flops"] / o["flops"], p["accuracy"],
                                                                  "fine-tuned")]
    points += [(r["flops"], r["accuracy"], r.get("label", "")) for r in (report.sweep or [])]
    if len(points) < 2:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([p[0] for p in points[:-1]], [p[1] for p in points[:-1]], "o-", color="#9aa5b1")
    ax.plot([points[-1][0]], [points[-1][1]], "o", color="#2a7ab0")
    for fx, acc, label in points:
        ax.annotate(label, (fx, acc), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel("FLOPs kept (fraction of the original)")
    ax.set_ylabel("top-1 accuracy")
    ax.set_title("Accuracy against FLOPs: original, each pruning step (before fine-tuning), final")
    ax.title.set_size(9)
    fig.tight_layout()
    return fig


def activation_heatmap(report):
    acts = (report.insight or {}).get("activations") or {}
    if not acts:
        return None
    plt = pyplot()
    names = list(acts)
    width = max(len(v) for v in acts.values())
    grid = np.full((len(names), width), np.nan)
    for i, n in enumerate(names):
        v = np.asarray(acts[n], dtype=float)
        grid[i, :len(v)] = v / v.max() if v.max() > 0 else v
    fig, ax = plt.subplots(figsize=(10, max(3, 0.22 * len(names) + 1.2)))
    im = ax.imshow(grid, aspect="auto", cmap="magma", interpolation="nearest")
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names, fontsize=max(5, 8 - len(names) // 20))
    ax.set_xlabel("channel")
    fig.colorbar(im, ax=ax, label="mean |activation| / layer max", fraction=0.03, pad=0.02)
    ax.set_title("Mean absolute activation per channel on the calibration data (original model)")
    fig.tight_layout()
    return fig
