"""``surgery sweep``: the pipeline over a grid of criteria x ratios x seeds.

The unpruned model is trained once per seed and reused by every criterion and ratio of that
seed. Writes ``sweep.csv`` (one row per run), ``sweep.md`` (mean and standard deviation over
seeds) and ``sweep.png`` (accuracy against FLOPs kept, one line per criterion).
"""
from __future__ import annotations

import csv
import dataclasses
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from surgery.pipeline.config import RunConfig
from surgery.pipeline.runner import run
from surgery.reporting.plots import pyplot

__all__ = ["sweep", "SweepResult"]

COLUMNS = ["kind", "criterion", "ratio", "seed", "accuracy_original", "accuracy_after_prune", "accuracy",
           "flops_kept", "params_kept", "sparsity"]


@dataclass
class SweepResult:
    out: Path
    rows: list
    markdown: str


def sweep(cfg: RunConfig, *, criteria: list, ratios: list, seeds: list, out: str | os.PathLike | None = None,
          kinds: list | None = None) -> SweepResult:
    """Run ``cfg`` for every (kind, criterion, ratio, seed); the grid's results and files. A mask
    kind (kernel, intra_kernel, weight) zeroes weights by magnitude, so it runs once per ratio
    whatever the criteria. Every run folder gets its report when ``cfg.report``."""
    folder = Path(out or os.path.join("runs", f"sweep-{time.strftime('%Y%m%d-%H%M%S')}"))
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    grid = [(s, k, c, r) for s in seeds for k in (kinds or [cfg.prune.kind])
            for c in (criteria if k == "channel" else [f"{k} masks"]) for r in ratios]
    trained: dict = {}
    for seed, kind, crit, ratio in tqdm(grid, desc="sweep", unit="run"):
        name = f"{crit.replace(' ', '-')}-r{ratio}-s{seed}"
        prune = dataclasses.replace(cfg.prune, kind=kind, criterion=crit if kind == "channel" else cfg.prune.criterion,
                                    ratio=ratio, target_flops=None, target_params=None)
        model = dataclasses.replace(cfg.model, checkpoint=trained.get(seed, cfg.model.checkpoint))
        one = dataclasses.replace(cfg, seed=seed, prune=prune, model=model, out=str(folder / name), report=cfg.report,
                                  eval=dataclasses.replace(cfg.eval, latency=False))
        m = run(one).metrics
        trained.setdefault(seed, str(folder / name / "checkpoints" / "trained.pt"))
        o, p = m["original"], m["pruned"]
        rows.append({"kind": kind, "criterion": crit, "ratio": ratio, "seed": seed, "accuracy_original": o["accuracy"],
                     "accuracy_after_prune": m["accuracy_after_prune"], "accuracy": p["accuracy"],
                     "flops_kept": p["flops"] / o["flops"], "params_kept": p["params"] / o["params"],
                     "sparsity": p.get("sparsity", 0.0)})
    with open(folder / "sweep.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    md = table(rows)
    (folder / "sweep.md").write_text(md)
    plot(rows, folder / "sweep.png")
    return SweepResult(folder, rows, md)


def _stats(values: list) -> str:
    mean = statistics.fmean(values)
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * mean:.2f} ± {100 * spread:.2f}"


def table(rows: list) -> str:
    """Markdown: one line per (criterion, ratio), mean ± standard deviation over seeds (in %)."""
    keys = list(dict.fromkeys((r["criterion"], r["ratio"]) for r in rows))
    lines = ["| criterion | ratio | seeds | FLOPs kept % | zero weights % | accuracy after pruning % | "
             "accuracy fine-tuned % |", "|---|---:|---:|---:|---:|---:|---:|"]
    for crit, ratio in keys:
        part = [r for r in rows if r["criterion"] == crit and r["ratio"] == ratio]
        lines.append(f"| {crit} | {ratio} | {len(part)} | {_stats([r['flops_kept'] for r in part])} | "
                     f"{_stats([r.get('sparsity', 0.0) for r in part])} | "
                     f"{_stats([r['accuracy_after_prune'] for r in part])} | {_stats([r['accuracy'] for r in part])} |")
    originals = [r["accuracy_original"] for r in rows]
    lines.append(f"\nunpruned accuracy: {_stats(originals)} % (over the seeds' base models)\n")
    return "\n".join(lines)


def plot(rows: list, path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for crit in dict.fromkeys(r["criterion"] for r in rows):
        pts = []
        for ratio in dict.fromkeys(r["ratio"] for r in rows if r["criterion"] == crit):
            part = [r for r in rows if r["criterion"] == crit and r["ratio"] == ratio]
            acc = [r["accuracy"] for r in part]
            pts.append((statistics.fmean(r["flops_kept"] for r in part), statistics.fmean(acc),
                        statistics.stdev(acc) if len(acc) > 1 else 0.0))
        pts.sort()
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", capsize=3,
                    label=crit)
    ax.set_xlabel("FLOPs kept (fraction of the original)")
    ax.set_ylabel("top-1 accuracy after fine-tuning")
    ax.legend(frameon=False, fontsize=8, ncol=2)
    ax.set_title("Accuracy against FLOPs (mean ± std over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
