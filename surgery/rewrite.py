"""Apply a removal (a set of channel units) to a model: rebuild layers, patch literals."""
from __future__ import annotations

import copy
import warnings
from collections import defaultdict

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn

from surgery.groups import ChannelGraph
from surgery.handlers import handler_for, replace_param

__all__ = ["rewrite", "set_submodule", "keep_indices"]


def set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    """Replace submodule ``name`` (dotted path) of ``root`` with ``new``."""
    parent_name, _, attr = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, attr, new)


def keep_indices(graph: ChannelGraph, removed: np.ndarray) -> dict:
    """For every slot, the kept positions: ``{(name, role): array}`` (only shrunk slots)."""
    gone = np.zeros(len(graph.roots), dtype=bool)
    gone[np.asarray(removed, dtype=np.int64)] = True
    out = {}
    for slot in graph.slots:
        mask = ~gone[graph.roots[slot.vars]]
        if not mask.all():
            out[(slot.name, slot.role)] = np.nonzero(mask)[0]
    return out


def rewrite(model: nn.Module, graph: ChannelGraph, removed: np.ndarray, *, inplace: bool = False) -> nn.Module:
    """Return ``model`` with the ``removed`` units (variable roots) physically gone.

    The original class is kept unless a literal in traced code (a reshape to a stored
    size, a split size) had to change: then the patched ``torch.fx.GraphModule`` is
    returned, with a warning that says so.
    """
    from surgery.plan import plan_from_units
    plan = plan_from_units(graph, removed, model)  # fingerprint before any change
    history = list(getattr(model, HISTORY, []))
    target = model if inplace else copy.deepcopy(model)
    keeps = keep_indices(graph, removed)
    kinds = {(s.name, s.role): s.kind for s in graph.slots}
    by_layer: dict = defaultdict(dict)
    for (name, role), keep in keeps.items():
        by_layer[(name, kinds[(name, role)] == "param")][role] = keep
    for (name, is_param), roles in by_layer.items():
        if is_param:
            _slice_param(target, name, roles)
        else:
            module = target.get_submodule(name)
            new = handler_for(module).prune(module, roles.get("in"), roles.get("out"))
            set_submodule(target, name, new)
    changed = _patched_graph(graph, removed)
    result = target if changed is None else _graph_module(model, target, changed)
    if plan.entries:
        history.append(plan.to_json(indent=None))
    object.__setattr__(result, HISTORY, history)
    object.__setattr__(result, "_surgery_model_name", plan.model)
    return result


HISTORY = "surgery_history"


def _graph_module(model: nn.Module, target: nn.Module, changed) -> fx.GraphModule:
    gm = fx.GraphModule(target, changed, type(model).__name__ + "Pruned")
    warnings.warn(
        f"pruning changed literal sizes in {type(model).__name__}'s forward (reshape/split "
        f"constants); returning a torch.fx.GraphModule with those constants patched instead "
        f"of the original class, whose forward would still use the old sizes.", stacklevel=3)
    return gm


def _slice_param(root: nn.Module, path: str, roles: dict) -> None:
    owner_name, _, attr = path.rpartition(".")
    owner = root.get_submodule(owner_name) if owner_name else root
    t = getattr(owner, attr)
    for role, keep in roles.items():
        t = t.index_select(int(role[3:]), torch.as_tensor(keep, device=t.device))
    replace_param(owner, attr, t)


def _patched_graph(graph: ChannelGraph, removed: np.ndarray):
    gone = np.zeros(len(graph.roots), dtype=bool)
    gone[np.asarray(removed, dtype=np.int64)] = True
    edits = []
    for p in graph.patches:
        new = int((~gone[graph.roots[p.vars]]).sum())
        if new != len(p.vars):
            edits.append((p, new))
    if not edits:
        return None
    g = copy.deepcopy(graph.gm.graph)
    nodes = {n.name: n for n in g.nodes}
    for p, value in edits:
        node = nodes[p.node]
        where = p.path[0]
        container = node.args if where == "args" else node.kwargs
        updated = _set_path(container, p.path[1:], value)
        if where == "args":
            node.args = updated
        else:
            node.kwargs = updated
    return g


def _set_path(obj, path: tuple, value):
    """Return a copy of nested tuples/lists/dicts/slices with ``path`` set to ``value``."""
    if not path:
        return value
    key, rest = path[0], path[1:]
    if isinstance(obj, slice):
        parts = {"start": obj.start, "stop": obj.stop, "step": obj.step}
        parts[key] = _set_path(parts[key], rest, value)
        return slice(parts["start"], parts["stop"], parts["step"])
    if isinstance(obj, dict):
        out = dict(obj)
        out[key] = _set_path(obj[key], rest, value)
        return out
    items = list(obj)
    items[key] = _set_path(items[key], rest, value)
    return type(obj)(items) if isinstance(obj, tuple) else items
