"""Which units of a group go: the group's weights shown to a criterion, and the one
validated selection path every entry point (``prune``, ``Pruner``, ``Surgeon``) uses.

Example:
    >>> import torch, surgery, criteria
    >>> from models import create
    >>> graph = surgery.trace(create("resnet20"), torch.randn(1, 3, 32, 32))
    >>> group = graph.prunable_groups[0]
    >>> len(select_units(graph, group, criteria.get("l1"), 4))
    4
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from surgery.core.errors import ArgumentError
from surgery.core.inputs import tensor_at
from surgery.criteria.base import Criterion, GroupView, Wrapper, n_remove
from surgery.criteria.normalize import Normalized
from surgery.groups.graph import ChannelGraph, Group, Kind, Member
from surgery.ops.registry import handler_for

__all__ = ["group_view", "member_tensor", "select_units", "units_for_positions", "n_remove", "EMPTY", "Remembered"]

EMPTY = np.zeros(0, dtype=np.int64)


def member_tensor(graph: ChannelGraph, member: Member) -> torch.Tensor:
    """``[positions, k]`` weights of one layer dimension."""
    if member.kind == Kind.PARAM:
        t = tensor_at(graph.gm, member.name).detach().movedim(member.role.dim, 0)
        return t.reshape(t.shape[0], -1)
    module = graph.module(member.name)
    return handler_for(module).slices(module, member.role).detach()


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


# one spelling for a view's member kinds, the same as its parts: producers, consumers, per_channel (+ params)
_PLURAL = {Kind.PRODUCER: "producers", Kind.CONSUMER: "consumers", Kind.PER_CHANNEL: "per_channel",
           Kind.PARAM: "params"}


def group_view(graph: ChannelGraph, group: Group) -> GroupView:
    """The group's weights per unit, by part, for :meth:`criteria.Criterion.score`
    (each part's slices are built when a criterion first reads them)."""
    names: dict = {}
    modules: dict = {}
    index: dict = {}
    for m in group.members:
        kind = _PLURAL[m.kind]
        names.setdefault(kind, []).append(m.name)
        if m.kind != Kind.PARAM:
            modules.setdefault(kind, []).append(graph.module(m.name))
            index.setdefault(kind, []).append(m.unit_index)

    def load(part: str) -> list:
        return [_per_unit(member_tensor(graph, m), m.unit_index, group.size)
                for m in group.members if m.kind.part == part]

    view = GroupView(names=names, modules=modules, size=group.size, loader=load, index=index)
    view.key = group.index
    return view


def ranks_by_score(criterion: Criterion) -> bool:
    """Whether ``criterion`` selects the lowest scores (its ``select`` is the base class's,
    through any wrappers that pass selection on)."""
    while isinstance(criterion, Wrapper) and type(criterion).select is Wrapper.select:
        if type(criterion).score_group is not Wrapper.score_group and not _monotone(criterion):
            return False
        criterion = criterion.base
    return type(criterion).select is Criterion.select


def _monotone(wrapper: Wrapper) -> bool:
    """Wrappers whose scores rank a group's channels in the base criterion's order."""
    return isinstance(wrapper, Normalized)


class Remembered(Wrapper):
    """``criterion`` with each group's scores computed once (keyed on the group's index: use
    one per traced graph), for searches that ask the same groups for many counts (a target
    bisection). Criteria with their own ``select`` (k-means, OCAP) are asked every time.

    Example:
        >>> import torch, surgery, criteria
        >>> from models import create
        >>> graph = surgery.trace(create("resnet20"), torch.randn(1, 3, 32, 32))
        >>> c = Remembered(criteria.get("l1"))
        >>> group = graph.prunable_groups[0]
        >>> bool((select_units(graph, group, c, 4) == select_units(graph, group, criteria.get("l1"), 4)).all())
        True
    """

    def __init__(self, base: Criterion) -> None:
        super().__init__(base)
        self._scores: dict = {}
        self._ranks = ranks_by_score(base)

    def score(self, target) -> torch.Tensor:
        key = getattr(target, "key", None)
        if key is None:
            return self.base.score(target)
        if key not in self._scores:
            self._scores[key] = self.base.score(target)
        return self._scores[key]

    def select(self, target, n: int) -> torch.Tensor:
        return Criterion.select(self, target, n) if self._ranks else self.base.select(target, n)


def select_units(graph: ChannelGraph, group: Group, criterion: Criterion, n: int) -> np.ndarray:
    """The variable ids of the ``n`` units of ``group`` that ``criterion`` removes.

    The criterion's answer is validated: ``n`` distinct indices in range, or, for a
    criterion whose data decides the count (``decides_count``), at most ``n``.
    """
    if n <= 0:
        return EMPTY
    if n >= group.size:
        raise ArgumentError(f"cannot remove {n} of group {group.index}'s {group.size} channels; keep at least one")
    drop = criterion.select(group_view(graph, group), n)
    idx = _indices(drop, criterion, group)
    if criterion.decides_count:
        if len(idx) > n:
            raise ArgumentError(f"{type(criterion).__name__}.select returned {len(idx)} channels for group "
                             f"{group.index}; at most {n} may go (the ratio caps a data-decided count)")
    elif len(idx) != n:
        raise ArgumentError(f"{type(criterion).__name__}.select returned {drop.tolist()} for group "
                         f"{group.index}: expected {n} distinct channel indices")
    return group.units[idx]


def _indices(drop: Any, criterion: Criterion, group: Group) -> np.ndarray:
    t = torch.as_tensor(drop)
    if t.dtype == torch.bool or t.dim() != 1 or t.dtype.is_floating_point:
        raise ArgumentError(f"{type(criterion).__name__}.select must return a 1-D tensor of channel indices, "
                         f"got dtype {t.dtype} and shape {tuple(t.shape)}")
    idx = t.cpu().numpy().astype(np.int64)
    if len(np.unique(idx)) != len(idx) or (len(idx) and (idx.min() < 0 or idx.max() >= group.size)):
        raise ArgumentError(f"{type(criterion).__name__}.select returned {idx.tolist()} for group {group.index}: "
                         f"expected distinct indices in [0, {group.size})")
    return np.sort(idx)


def units_for_positions(group: Group, member: Member, positions: np.ndarray, where: str) -> np.ndarray:
    """Group-local units of ``positions`` along ``member``'s dimension; the positions must
    cover whole units (coupled channels go together) and leave at least one unit."""
    hit = np.unique(member.unit_index[positions])
    if (hit < 0).any():
        raise ArgumentError(f"{where}: positions {positions.tolist()[:16]} span several groups; "
                         f"give each group's channels through its own layer")
    covered = np.nonzero(np.isin(member.unit_index, hit))[0]
    if len(covered) != len(np.unique(positions)):
        coupled = sorted({mm.name for mm in group.members})
        raise ArgumentError(f"{where}: channels {covered.tolist()[:32]} must be removed together (coupled by "
                         f"{', '.join(coupled)[:200]}); pass all of them")
    if len(hit) >= group.size:
        raise ArgumentError(f"{where}: cannot remove every channel of the group; keep at least one")
    return hit
