"""What pruning did: per-layer channels, parameters and FLOPs before and after, and (when
given) accuracy, latency, criterion scores, training history and the run's configuration.
``Report.to_html`` / ``to_pdf`` / ``to_markdown`` write a shareable report with figures
(matplotlib, from the ``[report]`` extra); ``print(report)`` shows the per-layer table."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import platform

import torch
import torch.nn as nn

from surgery.reporting import render as report_render
from surgery.core.metrics import count_params, flops_by_module
from surgery.core.version import __version__

__all__ = ["Report", "LayerRow", "report"]

_LAYERS = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._NormBase, nn.GroupNorm,
           nn.LayerNorm, nn.Embedding)


@dataclass
class LayerRow:
    name: str
    type: str
    channels: tuple  # (before, after): output channels / features
    params: tuple
    flops: tuple


@dataclass
class Report:
    """Returned by :func:`report`; ``print(report)`` shows a compact table.

    Optional parts (the pipeline fills them all): ``metrics`` (``{"original": ...,
    "pruned": ...}`` as in metrics.json), ``history`` (rows per epoch), ``insight`` (groups,
    criterion scores, activations: :func:`surgery.pipeline.insight.insight`), ``config``
    (the resolved configuration), ``sweep`` (rows with flops, accuracy, label).
    """
    layers: list = field(default_factory=list)
    params: tuple = (0, 0)
    flops: tuple = (0, 0)
    metrics: dict | None = None
    history: list = field(default_factory=list)
    insight: dict | None = None
    config: dict | None = None
    sweep: list = field(default_factory=list)
    environment: dict = field(default_factory=dict)
    title: str = "Pruning report"

    def summary_rows(self) -> list[tuple[str, str, str, str]]:
        """Executive summary rows: (quantity, before, after, change)."""
        return report_render.summary_rows(self)

    def risks(self) -> list[str]:
        """Risk notes computed from the data (heavily pruned or thin layers, classes that lost
        accuracy, unverified groups, a large drop before fine-tuning)."""
        return report_render.risks(self)

    def plan_in_words(self) -> list[str]:
        """One sentence per channel group: what was removed from it, or why it is frozen."""
        return report_render.plan_in_words(self)

    def to_markdown(self) -> str:
        return report_render.markdown(self)

    def to_html(self, path) -> str:
        """Write one self-contained HTML file (figures inline); returns the path."""
        return report_render.write_html(self, path)

    def to_pdf(self, path) -> str:
        """Write a PDF (summary and risks, figures, plan, reproducibility); returns the path."""
        return report_render.write_pdf(self, path)

    def summary(self, changed_only: bool = True) -> str:
        """Per-layer channels, parameters and FLOPs before and after (the layers that changed,
        unless ``changed_only=False``), then the totals. ``print(report)`` prints the same."""
        rows = [r for r in self.layers if not changed_only or r.channels[0] != r.channels[1]]
        cells = [[r.name, r.type, _pair(r.channels), _pair(r.params), _pair(r.flops)] for r in rows]
        total = ["total", "", "", _pair(self.params, pct=True), _pair(self.flops, pct=True)]
        head = ["layer", "type", "channels", "params", "FLOPs"]
        widths = [max(len(c[i]) for c in cells + [total, head]) for i in range(5)]
        line = lambda c: "  ".join(x.ljust(w) if i < 2 else x.rjust(w) for i, (x, w) in enumerate(zip(c, widths)))
        rule = "-" * (sum(widths) + 8)
        return "\n".join([line(head), rule] + [line(c) for c in cells] + [rule, line(total)])

    def __str__(self) -> str:
        return self.summary()


def _pair(p: tuple, pct: bool = False) -> str:
    text = f"{p[0]:,} -> {p[1]:,}"
    return text + (f" ({p[1] / p[0]:.0%})" if pct and p[0] else "")


def _size(m: nn.Module) -> int:
    for attr in ("out_channels", "out_features", "num_features", "num_channels", "embedding_dim"):
        if hasattr(m, attr):
            return int(getattr(m, attr))
    return int(m.normalized_shape[-1]) if isinstance(m, nn.LayerNorm) else 0


def report(original: nn.Module, pruned: nn.Module, example_inputs: Any, *, metrics: dict | None = None,
           history: list | None = None, insight: dict | None = None, config: dict | None = None,
           sweep: list | None = None, title: str = "Pruning report") -> Report:
    """Compare two models layer by layer (channels, parameters, fvcore FLOPs); the keyword
    arguments add what the report can explain when you have it (see :class:`Report`).

    Example:
        >>> import torch, surgery
        >>> from models import create
        >>> m, x = create("resnet20"), torch.randn(1, 3, 32, 32)
        >>> r = surgery.report(m, surgery.prune(m, x, ratio=0.5), x)
        >>> r.params[1] < r.params[0]
        True
    """
    fa, fb = flops_by_module(original, example_inputs), flops_by_module(pruned, example_inputs)
    after = dict(pruned.named_modules())
    rows = []
    for name, m in original.named_modules():
        p = after.get(name)
        if isinstance(m, _LAYERS) and p is not None:
            rows.append(LayerRow(name, type(m).__name__, (_size(m), _size(p)),
                                 (count_params(m), count_params(p)), (fa.get(name, 0), fb.get(name, 0))))
    return Report(rows, (count_params(original), count_params(pruned)), (fa.get("", 0), fb.get("", 0)),
                  metrics=metrics, history=list(history or []), insight=insight, config=config,
                  sweep=list(sweep or []), environment=environment(config, metrics), title=title)


def environment(config: dict | None = None, metrics: dict | None = None) -> dict:
    """Versions and settings that reproduce a run."""
    import torchvision
    return {"torch-surgery": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "threads": torch.get_num_threads(), "seed": (config or {}).get("seed"),
            "device": ((metrics or {}).get("pruned") or {}).get("latency_device") or (config or {}).get("device")}
