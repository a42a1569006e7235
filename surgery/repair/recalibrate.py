"""``surgery.recalibrate``: re-estimate the running statistics of the norm layers pruning touched.

A BatchNorm after a pruned layer keeps the statistics of the inputs it saw before pruning;
once channels upstream are gone (and the layers that mix them changed), its inputs have
other means and variances. Resetting them and averaging over a few calibration batches (a
cumulative average: ``momentum=None``) gives the statistics of the pruned model, with no
gradient step.

Example:
    >>> import torch, surgery
    >>> from models import create
    >>> x = torch.randn(8, 3, 32, 32)
    >>> small = surgery.prune(create("resnet20"), x[:1], ratio=0.5)
    >>> names = surgery.recalibrate(small, [(x, None)], max_batches=1)
    >>> "bn1" in names
    True
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
import torch.nn as nn

from surgery.core.errors import ArgumentError, ArgumentTypeError
from surgery.core.inputs import layer_names
from surgery.criteria.calibration import run_batches

__all__ = ["recalibrate", "touched_norms", "TOUCHED", "NORMS"]

TOUCHED = "surgery_touched"  # attribute of a pruned model: names of the layers its rewrites rebuilt
NORMS = (nn.modules.batchnorm._NormBase,)  # BatchNorm, SyncBatchNorm, InstanceNorm with running statistics


def touched_norms(model: nn.Module) -> list:
    """Names of the norm layers with running statistics that pruning rebuilt in ``model``."""
    touched = set(getattr(model, TOUCHED, ()))
    return [n for n, m in model.named_modules() if n in touched and _tracks(m)]


def recalibrate(model: nn.Module, data: Iterable, *, max_batches: int | None = 16, layers: Any = "touched",
                forward_fn: Callable | None = None) -> list:
    """Reset and re-estimate the running mean and variance of norm layers on ``data``
    (batches of ``(inputs, targets)``, or what ``forward_fn(model, batch)`` takes), at most
    ``max_batches``; returns the names recalibrated. ``layers``: "touched" (the norm layers a
    pruning step rebuilt; the others keep their statistics exactly), "all", or a list of layers
    or names. Gradients are off; the model's train/eval modes and momenta come back."""
    chosen = _chosen(model, layers)
    if not chosen:
        return []
    modes = {m: m.training for m in model.modules()}
    saved = {m: m.momentum for _, m in chosen}
    try:
        model.eval()
        for _, m in chosen:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the batches
            m.train()
        with torch.no_grad():
            seen = run_batches(model, data, max_batches=max_batches, forward_fn=forward_fn, desc="recalibrating")
        if not seen:
            raise ArgumentError("recalibrate: the data yielded no batches")
    finally:
        for m, momentum in saved.items():
            m.momentum = momentum
        for m, mode in modes.items():
            m.training = mode
    return [n for n, _ in chosen]


def _tracks(m: nn.Module) -> bool:
    return isinstance(m, NORMS) and m.track_running_stats and m.running_mean is not None


def _chosen(model: nn.Module, layers: Any) -> list:
    if layers == "touched":
        names = touched_norms(model)
    elif layers == "all":
        names = [n for n, m in model.named_modules() if _tracks(m)]
    elif isinstance(layers, (list, tuple)):
        names = layer_names(model, layers, "layers")
        bad = [n for n in names if not _tracks(model.get_submodule(n))]
        if bad:
            raise ArgumentError(f"recalibrate: {bad[:3]} have no running statistics to re-estimate")
    else:
        raise ArgumentTypeError(f"layers must be 'touched', 'all' or a list of layers or names, got {layers!r}")
    return [(n, model.get_submodule(n)) for n in names]
