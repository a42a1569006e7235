"""What the report explains about a pruning decision, gathered from the original model:
every group (anchor layer, size, channels removed, or why it is frozen), the criterion's
scores per prunable group, and for data criteria the mean activation of every channel.

Example:
    >>> import torch
    >>> from surgery.models import create
    >>> from surgery.pipeline.insight import insight
    >>> m = create("resnet20")
    >>> info = insight(m, torch.randn(1, 3, 32, 32), "l1", kept={})
    >>> info["groups"][0]["size"], len(info["scores"]) > 0
    (16, True)
"""
from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn as nn

import surgery.criteria as _criteria
from surgery.pruner import calibrate
from surgery.select.selection import group_view
from surgery.groups.build import trace

__all__ = ["insight", "activations"]


def insight(original: nn.Module, example: torch.Tensor, criterion: Any, kept: dict, *, data: Any = None,
            max_batches: int | None = None, ignored_layers: tuple = ()) -> dict:
    """``{"groups": [...], "scores": {anchor: [...]}, "activations": {layer: [...]}}``.

    ``kept`` maps layer names to their output channels after pruning (metrics' ``channels``);
    a group's ``removed`` is its anchor's loss.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = trace(original, example, ignored_layers=ignored_layers)
    crit = _criteria.get(criterion)
    if crit.needs_data:
        calibrate(crit, original, data, max_batches=max_batches)
    groups, scores = [], {}
    for g in graph.groups:
        anchor = g.anchor.name
        after = kept.get(anchor)
        removed = g.size - after if after is not None and g.anchor.role == "out" and after <= g.size else None
        groups.append({"anchor": anchor, "size": g.size, "removed": removed,
                       "frozen": None if g.prunable else g.reason})
        if g.prunable:
            try:
                scores[anchor] = [float(s) for s in crit.score(group_view(graph, g))]
            except (ValueError, RuntimeError):  # a criterion that cannot score this group alone
                pass
    out = {"groups": groups, "scores": scores, "criterion": getattr(crit, "name", "") or str(criterion)}
    if crit.needs_data and data is not None:
        out["activations"] = activations(original, data, max_batches or 4)
    return out


@torch.no_grad()
def activations(model: nn.Module, data: Any, max_batches: int = 4) -> dict:
    """{layer: mean |output| per channel} of conv and linear layers over ``max_batches`` batches."""
    sums, hooks, device = {}, [], next(model.parameters()).device
    for name, m in model.named_modules():
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
            def hook(_m, _inp, out, name=name):
                dims = [d for d in range(out.dim()) if d != 1] if out.dim() > 2 else [0]
                sums[name] = sums.get(name, 0) + out.detach().abs().mean(dim=dims).double()
            hooks.append(m.register_forward_hook(hook))
    was = model.training
    model.eval()
    n = 0
    try:
        for i, batch in enumerate(data):
            if i >= max_batches:
                break
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            model(x.to(device))
            n += 1
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    return {k: (v / max(n, 1)).tolist() for k, v in sums.items()}
