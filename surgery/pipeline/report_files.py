"""Build ``report.html`` and ``report.pdf`` from a run folder (what ``surgery report RUN``
and the end of ``surgery run`` do): the metrics, history, configuration and insight the run
wrote, and the per-layer comparison of the original (rebuilt from its checkpoint) and the
pruned model (``model.pt``)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import torch
import yaml

from surgery.core.architectures import build_stored
from surgery.layers import keep_classes
from surgery.reporting.report import Report, report
from surgery.saving import load

__all__ = ["write_reports", "run_report"]


def run_report(run_dir: str | Path, builders: dict | None = None) -> Report:
    """The :class:`surgery.Report` of a finished run. A run whose model is a ``module:function``
    spec needs that function in ``builders`` (``{"my_pkg.nets:build": build}``): nothing the
    run folder names is imported or called."""
    out = Path(run_dir)
    for name in ("metrics.json", "config.yaml", "model.pt"):
        if not (out / name).exists():
            raise FileNotFoundError(f"{out} is not a finished run folder: {name} is missing")
    metrics = json.loads((out / "metrics.json").read_text())
    config = yaml.safe_load((out / "config.yaml").read_text())
    pruned = load(out / "model.pt", builders=builders)
    example = torch.zeros(1, *metrics["input_shape"])
    original = _original(out, config, metrics, builders)
    insight = json.loads((out / "insight.json").read_text()) if (out / "insight.json").exists() else None
    history = list(csv.DictReader(open(out / "history.csv"))) if (out / "history.csv").exists() else []
    title = f"Pruning report: {config['model']['name']} on {config['data']['name']}"
    return report(original, pruned, example, metrics=metrics, history=history, insight=insight, config=config,
                  title=title)


def write_reports(run_dir: str | Path, builders: dict | None = None) -> list[str]:
    """Write report.html and report.pdf into ``run_dir``; returns their paths."""
    rep = run_report(run_dir, builders)
    out = Path(run_dir)
    (out / "report.md").write_text(rep.to_markdown())
    return [rep.to_html(out / "report.html"), rep.to_pdf(out / "report.pdf")]


def _original(out: Path, config: dict, metrics: dict, builders: dict | None) -> torch.nn.Module:
    classes = config["data"].get("classes")
    full = metrics.get("num_classes_trained") or len(metrics.get("class_names") or []) or 10
    kwargs = {"num_classes": full, **(config["model"].get("kwargs") or {})}
    model = build_stored(config["model"]["name"], kwargs, builders=builders, source=str(out / "config.yaml"))
    weights = out / "checkpoints" / "trained.pt"
    if not weights.exists() and config["model"].get("checkpoint"):
        weights = Path(config["model"]["checkpoint"])
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    if classes:
        keep_classes(model, classes)
    return model.eval()
