"""``surgery.prune``: the one-call pruning entry point."""
from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

import criteria as _criteria
from surgery.groups import ChannelGraph
from surgery.rewrite import rewrite
from surgery.scoring import group_view
from surgery.trace import trace
from surgery.tracing import as_inputs

__all__ = ["prune", "check_ratio", "select_removal", "verify_outputs", "calibrate"]


def check_ratio(ratio: Any, name: str = "ratio") -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)):
        raise TypeError(f"{name} must be a number in [0, 1), got {ratio!r}")
    if not 0.0 <= ratio < 1.0 or math.isnan(ratio):
        raise ValueError(f"{name} must be in [0, 1) (the fraction of channels to remove), got {ratio}")
    return float(ratio)


def n_remove(size: int, ratio: float) -> int:
    """``floor(ratio * size)`` channels, always keeping at least one."""
    return max(0, min(int(math.floor(ratio * size + 1e-9)), size - 1))


def select_removal(graph: ChannelGraph, criterion: Any, ratio: float) -> np.ndarray:
    """Variable roots of the lowest-scoring units, ``floor(ratio*size)`` per prunable group."""
    removed = []
    # tqdm's disable=None hides the bar when output is not a terminal (CI, logs)
    for group in tqdm(graph.prunable_groups, desc="selecting channels", disable=None, leave=False):
        k = n_remove(group.size, ratio)
        if k == 0:
            continue
        drop = criterion.select(group_view(graph, group), k)
        if getattr(criterion, "decides_count", False):  # the data decides; ratio caps it
            if drop.numel() > k:
                raise ValueError(f"{type(criterion).__name__}.select returned {drop.numel()} channels for "
                                 f"group {group.index}; at most {k} (ratio {ratio}) may go")
            k = drop.numel()
            if k == 0:
                continue
        if drop.numel() != k or len(set(drop.tolist())) != k:
            raise ValueError(f"{type(criterion).__name__}.select returned {drop.tolist()} for group "
                             f"{group.index}: expected {k} distinct channel indices")
        removed.append(group.units[drop.numpy()])
    return np.concatenate(removed) if removed else np.zeros(0, dtype=np.int64)


def prune(model: nn.Module, example_inputs: Any, *, ratio: float, criterion: Any = "l1",
          ignored_layers: Iterable = (), leaf_modules: Iterable = (), inplace: bool = False,
          data: Any = None, max_batches: int | None = None, forward_fn: Any = None,
          loss_fn: Any = None) -> nn.Module:
    """Remove ``floor(ratio * size)`` channels from every prunable group.

    Channels that reach a model output are never pruned, so the classifier needs no
    listing. The user's model is left untouched unless ``inplace=True``. Data criteria
    ("taylor", "coverage", ...) calibrate on ``data`` (batches of ``(inputs, targets)``, at
    most ``max_batches``; ``forward_fn(model, batch) -> (output, targets)`` and ``loss_fn``
    for other batch shapes and losses).

    Example:
        >>> import torch, surgery
        >>> from models import create
        >>> model = create("resnet20")
        >>> small = surgery.prune(model, torch.randn(1, 3, 32, 32), ratio=0.5)
        >>> sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
        True
    """
    ratio = check_ratio(ratio)
    crit = _criteria.get(criterion)
    graph = trace(model, example_inputs, leaf_modules=leaf_modules, ignored_layers=ignored_layers)
    calibrate(crit, model, data, max_batches=max_batches, forward_fn=forward_fn, loss_fn=loss_fn)
    removed = select_removal(graph, crit, ratio)
    pruned = rewrite(model, graph, removed, inplace=inplace)
    verify_outputs(graph, pruned, example_inputs)
    return pruned


def calibrate(criterion: Any, model: nn.Module, data: Any, **options: Any) -> None:
    """Run a data criterion's calibration (no-op for weight criteria, which take no data)."""
    if getattr(criterion, "needs_data", False):
        if data is None:
            raise ValueError(f"criterion {type(criterion).__name__} needs data: pass data=<DataLoader or "
                             f"list of (inputs, targets)> (and max_batches=... to limit it)")
        criterion.calibrate(model, data, **{k: v for k, v in options.items() if v is not None})
    elif data is not None:
        raise ValueError(f"criterion {type(criterion).__name__} uses weights only; data= is not used")


def verify_outputs(graph: ChannelGraph, pruned: nn.Module, example_inputs: Any) -> None:
    """Run ``pruned`` on the example inputs; output shapes must equal the traced ones."""
    from surgery.rules.context import VALUE_KEY, TensorMeta
    args, kwargs = as_inputs(example_inputs)
    modes = {m: m.training for m in pruned.modules()}
    pruned.eval()
    try:
        with torch.no_grad():
            out = pruned(*args, **kwargs)
    finally:
        for m, mode in modes.items():
            m.training = mode
    expected = [n for n in graph.gm.graph.nodes if n.op == "output"][0]
    want = _shapes(expected.args[0], lambda n: getattr(n.meta.get(VALUE_KEY), "shape", None))
    got = _shapes(out, lambda t: t.shape if isinstance(t, torch.Tensor) else None)
    if want != got:
        raise RuntimeError(f"internal error: the pruned model's output shapes {got} differ from "
                           f"the original {want}; please report this model")


def _shapes(obj: Any, leaf) -> Any:
    if isinstance(obj, (list, tuple)) and not isinstance(obj, torch.Size):
        return [_shapes(o, leaf) for o in obj]
    if isinstance(obj, dict):
        return {k: _shapes(v, leaf) for k, v in obj.items()}
    v = leaf(obj)
    return tuple(v) if isinstance(v, torch.Size) else None
