"""Mask-based sparsity (no shape change), for comparison with structured pruning.

Masks are applied with ``torch.nn.utils.prune`` (``weight_orig`` + ``weight_mask`` and a
forward pre-hook); :func:`make_permanent` folds them into plain parameters.

Granularities:
- ``"weight"``: unstructured magnitude, ranked globally over all Conv/Linear weights;
- ``"kernel"``: whole k x k kernels (one input channel of one filter) by L1, per layer;
- ``"pattern"``: inside every kernel, the smallest ``ratio`` of positions by |w|.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.utils.prune as tprune

from surgery.core.errors import ArgumentError, check_ratio

__all__ = ["sparsify", "make_permanent", "sparsity_report", "SparsityReport"]

_CONV = nn.modules.conv._ConvNd


@dataclass
class SparsityReport:
    """Zero fraction of each Conv/Linear layer's effective weight, and ``overall``: zeros over
    all Conv and Linear weights of the model (one definition for ``sparsify`` and
    ``sparsity_report``; layers a granularity does not touch count with their zeros)."""
    layers: dict  # name -> (zeros, total)

    @property
    def overall(self) -> float:
        zeros = sum(z for z, _ in self.layers.values())
        total = sum(t for _, t in self.layers.values())
        return zeros / total if total else 0.0

    def summary(self) -> str:
        """Sparsity and weight count per layer, then overall. ``print(report)`` prints the same."""
        rows = [f"{'layer':<40}{'sparsity':>10}{'weights':>12}"]
        rows += [f"{n:<40}{z / t:>10.1%}{t:>12,}" for n, (z, t) in self.layers.items()]
        rows.append(f"{'overall':<40}{self.overall:>10.1%}{sum(t for _, t in self.layers.values()):>12,}")
        return "\n".join(rows)

    def __str__(self) -> str:
        return self.summary()


def _layers(model: nn.Module, granularity: str, layers: Iterable | None) -> list:
    wanted = (_CONV, nn.Linear) if granularity == "weight" else (_CONV,)
    chosen = [(n, m) for n, m in model.named_modules() if isinstance(m, wanted)]
    if layers is not None:
        ids = {id(m) for m in layers}
        chosen = [(n, m) for n, m in chosen if id(m) in ids or n in ids or n in set(layers)]
    if granularity == "pattern":
        chosen = [(n, m) for n, m in chosen if m.weight[0, 0].numel() > 1]
    if not chosen:
        raise ArgumentError(f"no layers to sparsify with granularity {granularity!r} "
                         f"({'Conv/Linear' if granularity == 'weight' else 'Conv'} layers needed)")
    return chosen


def _lowest_mask(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """1 where kept: the ``floor(ratio * n)`` smallest scores are 0."""
    k = int(ratio * scores.numel() + 1e-9)
    mask = torch.ones_like(scores, dtype=torch.bool).reshape(-1)
    if k:
        mask[torch.argsort(scores.reshape(-1), stable=True)[:k]] = False
    return mask.reshape(scores.shape)


def _masks(chosen: list, ratio: float, granularity: str) -> dict:
    if granularity == "weight":  # global: one ranking over every weight
        flat = torch.cat([m.weight.detach().abs().reshape(-1) for _, m in chosen])
        keep = _lowest_mask(flat, ratio)
        out, start = {}, 0
        for n, m in chosen:
            out[n] = keep[start:start + m.weight.numel()].reshape(m.weight.shape)
            start += m.weight.numel()
        return out
    if granularity == "kernel":
        return {n: _lowest_mask(m.weight.detach().abs().flatten(2).sum(2), ratio)[..., None]
                .expand(m.weight.shape[:2] + (m.weight[0, 0].numel(),)).reshape(m.weight.shape)
                for n, m in chosen}
    if granularity == "pattern":
        out = {}
        for n, m in chosen:
            w = m.weight.detach().abs().flatten(2)  # [out, in, k]
            k = int(ratio * w.shape[2] + 1e-9)
            order = torch.argsort(w, dim=2, stable=True)
            keep = torch.ones_like(w, dtype=torch.bool)
            keep.scatter_(2, order[..., :k], False)
            out[n] = keep.reshape(m.weight.shape)
        return out
    raise ArgumentError(f"granularity must be 'weight', 'kernel' or 'pattern', got {granularity!r}")


def sparsify(model: nn.Module, ratio: float, granularity: str = "weight",
             layers: Iterable | None = None, *, dry_run: bool = False) -> SparsityReport:
    """Zero the ``ratio`` fraction of weights (in place, with masks) and report sparsity over
    the model's Conv and Linear weights. ``dry_run=True`` reports what the masks would give
    and changes nothing.

    Example:
        >>> import torch.nn as nn
        >>> m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3))
        >>> round(sparsify(m, 0.5, "kernel").overall, 2)
        0.5
    """
    ratio = check_ratio(ratio)
    chosen = _layers(model, granularity, layers)
    masks = {}
    for n, mask in _masks(chosen, ratio, granularity).items():
        module = model.get_submodule(n)
        if tprune.is_pruned(module) and hasattr(module, "weight_mask"):
            mask = mask & module.weight_mask.bool()  # masks accumulate
        masks[n] = mask
    if dry_run:
        report = sparsity_report(model)
        for n, mask in masks.items():
            w = model.get_submodule(n).weight.detach()
            report.layers[n] = (int(((w == 0) | ~mask.to(w.device)).sum()), w.numel())
        return report
    for n, mask in masks.items():
        module = model.get_submodule(n)
        tprune.custom_from_mask(module, "weight", mask.to(module.weight.device))
    return sparsity_report(model)


def make_permanent(model: nn.Module) -> nn.Module:
    """Fold every mask into a plain ``weight`` parameter and drop the hooks."""
    for m in model.modules():
        for hook in list(m._forward_pre_hooks.values()):
            if isinstance(hook, tprune.BasePruningMethod):
                tprune.remove(m, hook._tensor_name)
    return model


def sparsity_report(model: nn.Module, names: Iterable | None = None) -> SparsityReport:
    """Zero fraction of the (effective) weight of each Conv/Linear layer."""
    layers = {}
    for n, m in model.named_modules():
        if isinstance(m, (_CONV, nn.Linear)) and (names is None or n in set(names)):
            w = m.weight.detach()
            layers[n] = (int((w == 0).sum()), w.numel())
    return SparsityReport(layers)
