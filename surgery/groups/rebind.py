"""Reuse a channel graph on another model of the same structure (the next decoder block, the
same model after a step that changed nothing), instead of capturing it again.

The groups, slots and rules' records name layers by their qualified names, so they hold for
any model with the same modules, shapes and forward. :func:`structure` is the check: the
model's class, every module's name and class, every parameter's and buffer's name, shape and
dtype, and the plain attributes (ints, floats, bools, strings) of every module, except the
ones a caller says to ignore (a block's own index). :func:`rebind` points the graph at the
new model's modules.

Example:
    >>> import torch, torch.nn as nn, surgery
    >>> a, b = (nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)) for _ in range(2))
    >>> g = surgery.trace(a, torch.randn(1, 4))
    >>> structure(a) == structure(b)
    True
    >>> rebind(g, b, torch.randn(1, 4)).gm.get_submodule("0") is b[0]
    True
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Any, Iterable

import torch
import torch.nn as nn

from surgery.core.errors import ArgumentError
from surgery.groups.graph import ChannelGraph

__all__ = ["structure", "rebind"]

_PLAIN = (bool, int, float, str, type(None))


def structure(model: nn.Module, ignore: Iterable[str] = ()) -> tuple:
    """A hashable description of everything channel flow depends on, besides the forward's
    code (which the class fixes). ``ignore``: attribute names left out (e.g. ``layer_idx``)."""
    ignore = set(ignore)
    parts = [type(model).__qualname__]
    for name, module in model.named_modules():
        attrs = tuple(sorted((k, v) for k, v in vars(module).items()
                             if not k.startswith("_") and k not in ignore and isinstance(v, _PLAIN)))
        parts.append((name, type(module).__module__, type(module).__qualname__, attrs))
    parts += [(n, tuple(t.shape), str(t.dtype)) for n, t in model.state_dict(keep_vars=True).items()]
    return tuple(parts)


def rebind(graph: ChannelGraph, model: nn.Module, example_inputs: Any) -> ChannelGraph:
    """A copy of ``graph`` whose traced module reads ``model``'s layers and tensors (the
    caller has checked that :func:`structure` agrees)."""
    old = graph.gm
    root: dict = {}
    for node in old.graph.nodes:
        if node.op not in ("call_module", "get_attr") or node.target in root:
            continue
        try:
            root[node.target] = model.get_submodule(node.target) if node.op == "call_module" else \
                _attr(model, node.target)
        except AttributeError:
            if node.op == "call_module":
                raise ArgumentError(f"cannot reuse the channel graph: {type(model).__name__} has no module "
                                    f"{node.target!r}") from None
            root[node.target] = _attr(old, node.target)  # a constant the capture made (not the model's)
    import torch.fx as fx
    gm = fx.GraphModule(root, copy.deepcopy(old.graph), type(old).__name__)
    return dataclasses.replace(graph, gm=gm, example_inputs=example_inputs)


def _attr(module: nn.Module, target: str) -> Any:
    owner, _, name = target.rpartition(".")
    value = getattr(module.get_submodule(owner) if owner else module, name)
    if not isinstance(value, (torch.Tensor, nn.Module)):
        raise AttributeError(target)
    return value
