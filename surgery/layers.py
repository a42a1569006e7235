"""``surgery.layers``: single-layer edits; each function returns a new layer without the given channels.

These do not follow coupled layers (use :class:`surgery.Surgeon` for that); they are
the building blocks of the classic layer-by-layer flow:

Example:
    >>> import torch.nn as nn
    >>> conv, bn, nxt = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 3)
    >>> drop = [1, 5]
    >>> conv, bn, nxt = remove_filters(conv, drop), remove_bn(bn, drop), remove_kernels(nxt, drop)
    >>> conv.out_channels, bn.num_features, nxt.in_channels
    (6, 6, 6)
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from surgery.core.errors import ArgumentError, ArgumentTypeError
from surgery.ops.registry import handler_for
from surgery.rewrite.rebuild import set_submodule

__all__ = ["remove_filters", "remove_bn", "remove_kernels", "keep_classes"]

Indices = Sequence[int] | torch.Tensor


def _keep(n: int, drop: Indices, module: nn.Module, what: str) -> list:
    drop = sorted({int(i) for i in (drop.tolist() if isinstance(drop, torch.Tensor) else drop)})
    bad = [i for i in drop if not 0 <= i < n]
    if bad:
        raise ArgumentError(f"{type(module).__name__} has {n} {what}; indices {bad} are out of range")
    keep = [i for i in range(n) if i not in set(drop)]
    if not keep:
        raise ArgumentError(f"cannot remove all {n} {what} of {type(module).__name__}; keep at least one")
    return keep


def _out_size(m: nn.Module) -> int:
    return m.out_features if isinstance(m, nn.Linear) else m.out_channels


def _in_size(m: nn.Module) -> int:
    return m.in_features if isinstance(m, nn.Linear) else m.in_channels


def _check_type(m: nn.Module, fn: str) -> None:
    if not isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
        raise ArgumentTypeError(f"{fn} expects a Conv or Linear layer, got {type(m).__name__}")


def remove_filters(layer: nn.Module, indices: Indices) -> nn.Module:
    """A copy of a Conv/Linear without output channels ``indices``. For a depthwise conv
    the matching input channels go too (whole groups)."""
    _check_type(layer, "remove_filters")
    return handler_for(layer).prune(layer, None, _keep(_out_size(layer), indices, layer, "output channels"))


def remove_kernels(layer: nn.Module, indices: Indices) -> nn.Module:
    """A copy of a Conv/Linear without input channels ``indices`` (grouped convs: the same
    positions in every group, or whole groups; depthwise: whole groups)."""
    _check_type(layer, "remove_kernels")
    return handler_for(layer).prune(layer, _keep(_in_size(layer), indices, layer, "input channels"), None)


def remove_bn(bn: nn.Module, indices: Indices) -> nn.Module:
    """A copy of a BatchNorm (or other per-channel norm) without channels ``indices``."""
    if not isinstance(bn, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)):
        raise ArgumentTypeError(f"remove_bn expects a normalisation layer, got {type(bn).__name__}")
    handler = handler_for(bn)
    return handler.prune(bn, None, _keep(handler._size(bn), indices, bn, "channels"))


def keep_classes(model: nn.Module, classes: Sequence[int], layer: str | None = None) -> nn.Module:
    """Replace the classifier (the last Linear, or ``layer``) in place by one whose outputs
    are the rows for ``classes``, in that order (class-aware pruning, OCAP).

    Example:
        >>> import torch.nn as nn
        >>> m = nn.Sequential(nn.Linear(4, 10))
        >>> keep_classes(m, [7, 2])[0].out_features
        2
    """
    if layer is None:
        linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ArgumentError("keep_classes: the model has no nn.Linear; pass layer=<name of the classifier>")
        layer = linears[-1]
    head = model.get_submodule(layer)
    classes = [int(c) for c in classes]
    n = head.out_features if isinstance(head, nn.Linear) else head.out_channels
    if not classes or len(set(classes)) != len(classes) or min(classes) < 0 or max(classes) >= n:
        raise ArgumentError(f"classes must be distinct indices in [0, {n}), got {classes}")
    set_submodule(model, layer, handler_for(head).prune(head, None, classes))
    return model
