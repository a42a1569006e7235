"""The one validator of channel indices given by a person or a file (``Surgeon``,
``apply_plan``, ``surgery.load``): integers (never booleans or floats), distinct, in range.

Example:
    >>> channel_indices([3, 1], size=4).tolist()
    [1, 3]
"""
from __future__ import annotations

import numbers
from typing import Any

import numpy as np
import torch

from surgery.core.errors import ArgumentError, ArgumentTypeError

__all__ = ["channel_indices"]


def channel_indices(values: Any, size: int | None = None, where: str = "indices") -> np.ndarray:
    """``values`` as sorted int64 channel indices, or an error naming ``where`` and the fix.

    A boolean mask, a float (even 1.0) or a repeated index is refused rather than read as
    some other channel; with ``size`` every index must lie in ``[0, size)``."""
    items = _items(values, where)
    for v in items:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral):
            raise ArgumentTypeError(f"{where} must be integer channel indices, got {v!r} in {_short(items)} (for a "
                                    f"boolean mask, pass mask.nonzero().flatten())")
    idx = np.asarray([int(v) for v in items], dtype=np.int64)
    if len(np.unique(idx)) != len(idx):
        repeated = sorted({int(v) for v in idx if (idx == v).sum() > 1})
        raise ArgumentError(f"{where} repeat channels {repeated[:8]}: give each channel once")
    if size is not None and len(idx) and (idx.min() < 0 or idx.max() >= size):
        bad = [int(v) for v in idx if not 0 <= v < size]
        raise ArgumentError(f"{where} {bad[:8]} are out of range: the layer has {size} channels (0 to {size - 1})")
    return np.sort(idx)


def _items(values: Any, where: str) -> list:
    if isinstance(values, torch.Tensor):
        if values.dim() != 1 or values.dtype == torch.bool or values.is_floating_point():
            raise ArgumentTypeError(f"{where} must be a 1-D integer tensor of channel indices, got dtype {values.dtype} "
                                    f"and shape {tuple(values.shape)} (for a boolean mask, pass mask.nonzero().flatten())")
        return values.tolist()
    if isinstance(values, np.ndarray):
        if values.ndim != 1:
            raise ArgumentTypeError(f"{where} must be 1-D, got shape {values.shape}")
        return list(values)
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise ArgumentTypeError(f"{where} must be a list of channel indices, got {values!r}")
    return list(values)


def _short(items: list) -> str:
    return repr(items[:8])[:-1] + (", ...]" if len(items) > 8 else "]")
