"""Describe a channel group to a criterion and pick the units to remove."""
from __future__ import annotations

import numpy as np
import torch

from criteria import GroupView
from surgery.groups import ChannelGraph, Group
from surgery.handlers import handler_for

__all__ = ["group_view", "member_tensor"]

_KIND = {"producer": "producers", "consumer": "consumers", "per_channel": "per_channel", "param": "per_channel"}


def member_tensor(graph: ChannelGraph, name: str, role: str, kind: str) -> torch.Tensor:
    """``[positions, k]`` weights of one layer dimension."""
    if kind == "param":
        owner, _, attr = name.rpartition(".")
        t = getattr(graph.gm.get_submodule(owner) if owner else graph.gm, attr)
        t = t.detach().movedim(int(role[3:]), 0)
        return t.reshape(t.shape[0], -1)
    module = graph.gm.get_submodule(name)
    return handler_for(module).slices(module, role).detach()


def _per_unit(t: torch.Tensor, unit_index: np.ndarray, size: int) -> torch.Tensor:
    if len(unit_index) == size and (unit_index == np.arange(size)).all():
        return t  # one position per unit, already in unit order: no copy
    pos = np.nonzero(unit_index >= 0)[0]
    units = unit_index[pos]
    counts = np.bincount(units, minlength=size)
    order = pos[np.argsort(units, kind="stable")]
    rows = t[torch.as_tensor(order, device=t.device)]
    if (counts == counts[0]).all():
        return rows.reshape(size, -1)
    out = rows.new_zeros(size, int(counts.max()) * t.shape[1])
    start = 0
    for u, c in enumerate(counts.tolist()):
        out[u, : c * t.shape[1]] = rows[start:start + c].reshape(-1)
        start += c
    return out


def group_view(graph: ChannelGraph, group: Group) -> GroupView:
    """The group's weights per unit, by kind, for :meth:`criteria.Criterion.score`
    (each kind's slices are built when a criterion first reads them)."""
    names: dict = {}
    modules: dict = {}
    index: dict = {}
    for m in group.members:
        names.setdefault(m.kind, []).append(m.name)
        if m.kind != "param":
            modules.setdefault(m.kind, []).append(graph.gm.get_submodule(m.name))
            index.setdefault(m.kind, []).append(m.unit_index)

    def load(part: str) -> list:
        return [_per_unit(member_tensor(graph, m.name, m.role, m.kind), m.unit_index, group.size)
                for m in group.members if _KIND[m.kind] == part]

    return GroupView(names=names, modules=modules, size=group.size, loader=load, index=index)
