"""What pruning did: per-layer channels, parameters and FLOPs before and after."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from surgery.metrics import count_params, flops_by_module

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
    """Returned by :func:`report`; ``print(report)`` shows a compact table."""
    layers: list = field(default_factory=list)
    params: tuple = (0, 0)
    flops: tuple = (0, 0)

    def table(self, changed_only: bool = True) -> str:
        rows = [r for r in self.layers if not changed_only or r.channels[0] != r.channels[1]]
        w = max([len(r.name) for r in rows] + [5])
        head = f"{'layer':<{w}}  {'type':<12}{'channels':>13}{'params':>23}{'FLOPs':>27}"
        out = [head, "-" * len(head)]
        for r in rows:
            out.append(f"{r.name:<{w}}  {r.type:<12}{_pair(r.channels):>13}{_pair(r.params):>23}{_pair(r.flops):>27}")
        out.append("-" * len(head))
        out.append(f"{'total':<{w}}  {'':<12}{'':>13}{_pair(self.params, pct=True):>23}{_pair(self.flops, pct=True):>27}")
        return "\n".join(out)

    def __str__(self) -> str:
        return self.table()


def _pair(p: tuple, pct: bool = False) -> str:
    text = f"{p[0]:,} -> {p[1]:,}"
    return text + (f" ({p[1] / p[0]:.0%})" if pct and p[0] else "")


def _size(m: nn.Module) -> int:
    for attr in ("out_channels", "out_features", "num_features", "num_channels", "embedding_dim"):
        if hasattr(m, attr):
            return int(getattr(m, attr))
    return int(m.normalized_shape[-1]) if isinstance(m, nn.LayerNorm) else 0


def report(original: nn.Module, pruned: nn.Module, example_inputs: Any) -> Report:
    """Compare two models layer by layer (channels, parameters, fvcore FLOPs).

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
    return Report(rows, (count_params(original), count_params(pruned)), (fa.get("", 0), fb.get("", 0)))
