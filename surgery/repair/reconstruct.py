"""Least-squares reconstruction: refit each pruned consumer so that, from the channels it kept,
it reproduces what the original layer computed (ThiNet; He et al. 2017, "channel pruning";
FLAP's bias compensation is the zero-order case, a bias fitted alone).

For every Conv (groups=1) and Linear layer whose inputs lost channels, in forward order: the
original model's output of that layer (its kept output channels) is the target ``Y``, the
pruned model's input to it ``X`` (unfolded into patches for a conv). ``XᵀX`` and ``XᵀY`` are
summed over the calibration batches (memory bounded by the layer's size, not the data), and
``(XᵀX + λI) W = XᵀY`` gives the new weight and bias. Layers are refitted one after the other,
so each sees the inputs its refitted predecessors produce. This is a weight update after the
verified structural rewrite, reported as such (``model.surgery_repairs``).

Example:
    >>> import torch, surgery
    >>> from models import create
    >>> x = torch.randn(16, 3, 32, 32)
    >>> model = create("resnet20").eval()
    >>> small = surgery.prune(model, x[:2], ratio=0.5)
    >>> errors = reconstruct(model, small, [(x, None)], max_batches=1)
    >>> all(after <= before for before, after in errors.values())
    True
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from surgery.core.errors import ArgumentError
from surgery.criteria.calibration import as_batches, run_batches

__all__ = ["reconstruct", "consumers", "REPAIRS", "KEEPS"]

REPAIRS = "surgery_repairs"  # attribute of a model: the weight updates made after its verified rewrites
KEEPS = "_surgery_keeps"  # attribute of a pruned model: {(layer, role): kept indices} of its last rewrite


def reconstruct(original: nn.Module, pruned: nn.Module, data: Iterable, *, keeps: dict | None = None,
                max_batches: int | None = 8, ridge: float = 1e-3, forward_fn: Callable | None = None) -> dict:
    """Refit the pruned model's consumers (in place) on ``data``; returns ``{layer: (error before,
    error after)}``, each the relative squared error of the layer's output against the
    original's on the calibration batches. ``keeps`` (``{(layer, "out"): kept indices}``, what
    the rewrite kept; default: the one ``surgery.prune`` records on the model) says which of
    the original's outputs a layer whose outputs were pruned too must reproduce."""
    batches = list(_take(data, max_batches))
    if not batches:
        raise ArgumentError("reconstruct: the data yielded no batches")
    keeps = keeps if keeps is not None else getattr(pruned, KEEPS, {})
    errors = {}
    for name in consumers(original, pruned):
        errors[name] = _refit(original, pruned, name, batches, ridge, forward_fn, keeps.get((name, "out")))
    done = [f"least squares: {len(errors)} consumer layers refitted on {len(batches)} batches"]
    object.__setattr__(pruned, REPAIRS, list(getattr(pruned, REPAIRS, [])) + done)
    return errors


def consumers(original: nn.Module, pruned: nn.Module) -> list:
    """Conv (groups=1) and Linear layers, in module order, whose input width pruning reduced."""
    own = dict(original.named_modules())
    out = []
    for name, m in pruned.named_modules():
        o = own.get(name)
        if isinstance(m, nn.Linear) and isinstance(o, nn.Linear) and m.in_features < o.in_features:
            out.append(name)
        elif (isinstance(m, nn.Conv2d) and isinstance(o, nn.Conv2d) and m.groups == 1 and o.groups == 1
              and m.in_channels < o.in_channels):
            out.append(name)
    return out


def _take(data: Iterable, max_batches: int | None) -> Iterable:
    for i, batch in enumerate(as_batches(data)):
        if max_batches is not None and i >= max_batches:
            return
        yield batch


def _refit(original: nn.Module, pruned: nn.Module, name: str, batches: list, ridge: float,
           forward_fn: Callable | None, keep_out) -> tuple[float, float]:
    layer, reference = pruned.get_submodule(name), original.get_submodule(name)
    if keep_out is None and _width(reference) != _width(layer):
        raise ArgumentError(f"reconstruct: '{name}' lost output channels too; pass keeps= (what the rewrite kept), "
                            f"as surgery.prune(..., reconstruct='least_squares') does")
    gram, cross, target = None, None, 0.0
    for batch in batches:
        x, y = _capture(pruned, layer, batch, forward_fn, "input"), _capture(original, reference, batch, forward_fn,
                                                                            "output")
        rows, targets = _design(layer, x), _targets(y, keep_out, layer)
        gram = rows.T @ rows if gram is None else gram + rows.T @ rows
        cross = rows.T @ targets if cross is None else cross + rows.T @ targets
        target += float((targets ** 2).sum())
    before = _error(gram, cross, target, _current(layer))
    solution = torch.linalg.solve(gram + ridge * gram.diagonal().mean() * torch.eye(len(gram), dtype=gram.dtype),
                                  cross)
    after = _error(gram, cross, target, solution)
    if after < before:  # never make a layer worse on its own calibration data
        _assign(layer, solution)
    return before, min(before, after)


def _capture(model: nn.Module, layer: nn.Module, batch: Any, forward_fn, what: str) -> torch.Tensor:
    store = []

    def hook(module, args, output):
        store.append((args[0] if what == "input" else output).detach().double())
    handle = layer.register_forward_hook(hook)
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            run_batches(model, [batch], max_batches=1, forward_fn=forward_fn, desc="reconstructing")
    finally:
        handle.remove()
        for m, mode in modes.items():
            m.training = mode
    return store[0]


def _width(layer: nn.Module) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def _design(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if isinstance(layer, nn.Linear):
        rows = x.reshape(-1, x.shape[-1])
    else:
        patches = F.unfold(x, layer.kernel_size, layer.dilation, layer.padding, layer.stride)  # [N, C*k*k, L]
        rows = patches.transpose(1, 2).reshape(-1, patches.shape[1])
    if layer.bias is not None:
        rows = torch.cat([rows, torch.ones(len(rows), 1, dtype=rows.dtype)], 1)
    return rows


def _targets(y: torch.Tensor, keep_out, layer: nn.Module) -> torch.Tensor:
    if keep_out is not None:
        y = y.index_select(1 if isinstance(layer, nn.Conv2d) else -1, torch.as_tensor(keep_out))
    if isinstance(layer, nn.Linear):
        return y.reshape(-1, y.shape[-1])
    return y.flatten(2).transpose(1, 2).reshape(-1, y.shape[1])


def _current(layer: nn.Module) -> torch.Tensor:
    w = layer.weight.detach().double().reshape(layer.weight.shape[0], -1).T
    if layer.bias is not None:
        w = torch.cat([w, layer.bias.detach().double()[None]], 0)
    return w


def _error(gram: torch.Tensor, cross: torch.Tensor, target: float, w: torch.Tensor) -> float:
    """||XW - Y||² / ||Y||², from the sums (no stored activations)."""
    residual = target - 2 * float((cross * w).sum()) + float((w * (gram @ w)).sum())
    return max(residual, 0.0) / max(target, 1e-30)


def _assign(layer: nn.Module, solution: torch.Tensor) -> None:
    with torch.no_grad():
        if layer.bias is not None:
            layer.bias.copy_(solution[-1].to(layer.bias.dtype))
            solution = solution[:-1]
        layer.weight.copy_(solution.T.reshape(layer.weight.shape).to(layer.weight.dtype))
