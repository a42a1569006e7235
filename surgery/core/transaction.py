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


DEPTH = 3  # how deep containers held in attributes (dicts of lists of ...) are saved and restored
_MODULE_OWN = frozenset(vars(nn.Module()))  # nn.Module's own bookkeeping (parameters, hooks, ...)
_CONTAINERS = (dict, list, set)


def _snapshot(model: nn.Module) -> list:
    saved = []
    for m in model.modules():
        attrs = dict(vars(m))
        held = [v for k, v in attrs.items() if isinstance(v, _CONTAINERS) and k not in _MODULE_OWN]
        saved.append((m, attrs, dict(m._parameters), dict(m._buffers), dict(m._modules),
                      _containers(held, DEPTH) if held else []))
    return saved


def _containers(values: list, depth: int, seen: set | None = None) -> list:
    """``[(container, its contents)]`` for the dicts, lists and sets among ``values`` and inside
    them, ``depth`` levels deep (each once), so a forward that writes into them can be undone."""
    seen = set() if seen is None else seen
    out = []
    for v in values:
        if depth <= 0 or id(v) in seen or not isinstance(v, (dict, list, set)):
            continue
        seen.add(id(v))
        contents = dict(v) if isinstance(v, dict) else list(v) if isinstance(v, list) else set(v)
        out.append((v, contents))
        out += _containers(list(contents.values()) if isinstance(v, dict) else list(contents), depth - 1, seen)
    return out


def _refill(container: dict | list | set, contents: dict | list | set) -> None:
    if isinstance(container, list):
        container[:] = contents
    else:
        container.clear()
        container.update(contents)


def _restore(saved: list) -> None:
    for m, attrs, params, buffers, modules, containers in saved:
        m.__dict__.clear()
        m.__dict__.update(attrs)
        m._parameters, m._buffers, m._modules = params, buffers, modules
        for container, contents in containers:
            _refill(container, contents)


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
    under a tracer that stores proxies or fake tensors on ``self``), and the contents of the
    dicts, lists and sets those attributes hold (``self.cache["scale"] = ...``,
    ``self.seen.append(...)``), ``DEPTH`` levels deep."""
    saved = _snapshot(model)
    try:
        yield model
    finally:
        _restore(saved)
