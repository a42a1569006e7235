"""All-or-nothing edits of a model in place: on any error it is restored exactly.

Example:
    >>> import torch.nn as nn
    >>> net = nn.Sequential(nn.Linear(2, 2))
    >>> try:
    ...     with transaction(net):
    ...         net[0] = nn.Linear(2, 3)
    ...         raise RuntimeError("verification failed")
    ... except RuntimeError:
    ...     pass
    >>> net[0].out_features
    2
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch.nn as nn

__all__ = ["transaction", "untouched"]


def _snapshot(model: nn.Module) -> list:
    return [(m, dict(vars(m)), dict(m._parameters), dict(m._buffers), dict(m._modules))
            for m in model.modules()]


def _restore(saved: list) -> None:
    for m, attrs, params, buffers, modules in saved:
        m.__dict__.clear()
        m.__dict__.update(attrs)
        m._parameters, m._buffers, m._modules = params, buffers, modules


@contextlib.contextmanager
def transaction(model: nn.Module) -> Iterator[nn.Module]:
    """Snapshot every module's attributes, parameter, buffer and child dicts; restore them
    if the block raises (tensors are not copied: edits replace them, never write into them)."""
    saved = _snapshot(model)
    try:
        yield model
    except BaseException:
        _restore(saved)
        raise


@contextlib.contextmanager
def untouched(model: nn.Module) -> Iterator[nn.Module]:
    """Restore every module's attributes after the block, whatever it did (a forward run
    under a tracer that stores proxies or fake tensors on ``self``)."""
    saved = _snapshot(model)
    try:
        yield model
    finally:
        _restore(saved)
