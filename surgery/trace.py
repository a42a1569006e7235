"""``surgery.trace``: model + example inputs -> ChannelGraph."""
from __future__ import annotations

import warnings
from typing import Any, Iterable

import torch.nn as nn

from surgery.analysis import analyse
from surgery.groups import ChannelGraph, build_groups
from surgery.plan import input_spec
from surgery.tracing import propagate, symbolic_trace

__all__ = ["trace"]


def trace(model: nn.Module, example_inputs: Any, *, leaf_modules: Iterable = (),
          ignored_layers: Iterable = ()) -> ChannelGraph:
    """Trace ``model`` and compute its channel groups.

    Args:
        model: any ``nn.Module`` torch.fx can trace (see ``leaf_modules`` otherwise).
        example_inputs: a tensor, a tuple of inputs or a dict of keyword inputs.
        leaf_modules: module types, names or instances to treat as black boxes.
        ignored_layers: modules (or names) whose output channels must stay whole.

    Example:
        >>> import torch, torchvision, surgery
        >>> g = surgery.trace(torchvision.models.resnet18(), torch.randn(1, 3, 64, 64))
        >>> len(g.prunable_groups)
        12
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    ignored = _layer_names(model, ignored_layers)
    gm = symbolic_trace(model, leaf_modules)
    propagate(gm, example_inputs)
    ctx = analyse(gm)
    _freeze_ignored(ctx, ignored)
    groups, roots = build_groups(ctx)
    for g in groups:
        for m in g.members:
            m.type_name = "Parameter" if m.kind == "param" else type(gm.get_submodule(m.name)).__name__
    graph = ChannelGraph(gm, ctx, groups, roots)
    graph.input_spec = input_spec(example_inputs)
    graph.example_inputs = example_inputs
    for w in ctx.warnings:
        warnings.warn(w, stacklevel=2)
    return graph


def _freeze_ignored(ctx, names: list) -> None:
    for (name, role), slot in ctx.slots.items():
        if role != "in" and any(name == n or name.startswith(n + ".") for n in names):
            ctx.vars.freeze(slot.vars, f"'{name}' is in ignored_layers")


def _layer_names(model: nn.Module, layers: Iterable) -> list:
    by_id = {id(m): n for n, m in model.named_modules()}
    known = set(by_id.values())
    names = []
    for layer in layers:
        if isinstance(layer, str):
            if layer not in known:
                raise ValueError(f"ignored_layers: the model has no submodule named {layer!r}")
            names.append(layer)
        elif isinstance(layer, nn.Module) and id(layer) in by_id:
            names.append(by_id[id(layer)])
        else:
            raise TypeError(f"ignored_layers entries must be submodules of the model or their "
                            f"names; got {type(layer).__name__}")
    return names
