"""Analytic cost of a selection: FLOPs (or parameters) after removing units, without
rewriting the model. Used by target-FLOPs/params searches; the final model is still
measured with fvcore / counted exactly.

Each leaf module's cost (fvcore by module, counted once on the original) scales by the kept
fraction of every channel dimension the graph tracks for it (a conv's outputs and inputs,
a BatchNorm's channels; a depthwise conv has one tracked dimension). Cost that fvcore
attributes to no leaf module (functional ops in ``forward``) is kept constant, so the
estimate errs towards keeping too much; :meth:`CostModel.correct` re-targets from one real
measurement.

Example:
    >>> import numpy as np, torch, surgery
    >>> from surgery.models import create
    >>> m, x = create("resnet20"), torch.randn(1, 3, 32, 32)
    >>> g = surgery.trace(m, x)
    >>> cost = CostModel(m, g, x)
    >>> cost.kept(np.array([], dtype=np.int64))
    1.0
"""
from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from surgery.core.errors import ArgumentError
from surgery.groups.graph import ChannelGraph
from surgery.core.inputs import as_inputs, evaluating
from surgery.core.metrics import flops_by_module

__all__ = ["CostModel", "latency_by_module"]


def latency_by_module(model: nn.Module, example_inputs: Any, repeats: int = 5) -> dict:
    """{leaf module name: median seconds of its forward, "": of the whole forward}, measured on
    the example inputs (one warm-up run, then ``repeats``; eval mode, no gradients)."""
    leaves = {m: n for n, m in model.named_modules() if not any(True for _ in m.children())}
    runs: dict = {n: [] for n in leaves.values()}
    runs[""] = []
    started: dict = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args: started.__setitem__(mod, time.perf_counter()))
             for m in leaves]
    hooks += [m.register_forward_hook(lambda mod, args, out: runs[leaves[mod]].append(
        time.perf_counter() - started.pop(mod))) for m in leaves]
    args, kwargs = as_inputs(example_inputs)
    try:
        with evaluating(model), torch.no_grad():
            for i in range(repeats + 1):
                t0 = time.perf_counter()
                model(*args, **kwargs)
                runs[""].append(time.perf_counter() - t0)
                if i == 0:  # the warm-up run does not count
                    for times in runs.values():
                        times.clear()
    finally:
        for h in hooks:
            h.remove()
    return {n: (statistics.median(ts) if ts else 0.0) for n, ts in runs.items()}


class CostModel:
    """Fraction of the original cost kept after removing a set of units."""

    def __init__(self, model: nn.Module, graph: ChannelGraph, example_inputs: Any, kind: str = "flops") -> None:
        if kind not in ("flops", "params", "latency"):
            raise ArgumentError(f"kind must be 'flops', 'params' or 'latency', got {kind!r}")
        leaves = {n: m for n, m in model.named_modules() if not any(True for _ in m.children())}
        if kind in ("flops", "latency"):
            by_module = flops_by_module(model, example_inputs) if kind == "flops" else \
                latency_by_module(model, example_inputs)
            self.total = float(by_module.get("", 0))
            cost = {n: float(by_module.get(n, 0)) for n in leaves}
        else:
            self.total = float(sum(p.numel() for p in model.parameters()))
            cost = {n: float(sum(p.numel() for p in m.parameters(recurse=False))) for n, m in leaves.items()}
        if self.total <= 0:
            raise ArgumentError(f"the model has no {kind} to count")
        dims: dict = {}
        for g in graph.groups:
            for m in g.members:
                if m.name in cost and cost[m.name] > 0:
                    ids = dims.setdefault((m.name, str(m.role)), np.full(len(m.unit_index), -1, dtype=np.int64))
                    inside = m.unit_index >= 0
                    ids[inside] = g.units[m.unit_index[inside]]
        self._names = sorted({name for name, _ in dims})
        self._cost = np.array([cost[n] for n in self._names])
        self._fixed = self.total - self._cost.sum()
        # every tracked dimension's unit ids, flat: dimension d holds _ids[_dim == d]
        index = {name: i for i, name in enumerate(self._names)}
        self._owner = np.array([index[name] for name, _ in dims], dtype=np.int64)
        self._ids = np.concatenate(list(dims.values())) if dims else np.zeros(0, dtype=np.int64)
        self._dim = np.repeat(np.arange(len(dims)), [len(ids) for ids in dims.values()])
        self._length = np.bincount(self._dim, minlength=len(dims)).astype(float)

    def kept(self, removed: np.ndarray) -> float:
        """Estimated fraction of the cost kept when ``removed`` (unit ids) go."""
        gone = np.bincount(self._dim[np.isin(self._ids, np.asarray(removed, dtype=np.int64))],
                           minlength=len(self._owner))
        factor = np.ones(len(self._names))
        np.multiply.at(factor, self._owner, 1.0 - gone / np.maximum(self._length, 1.0))
        return float((self._fixed + (self._cost * factor).sum()) / self.total)

    def unit_saving(self, units: np.ndarray) -> float:
        """Fraction of the cost one unit of a group saves (the first of ``units``; the units of a
        group sit in the same dimensions, so each saves about the same)."""
        return 1.0 - self.kept(np.asarray(units[:1], dtype=np.int64))
