"""Channel groups: coupled units of channel variables, and the ChannelGraph that holds them."""
from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch.fx as fx
import torch.nn as nn

from surgery.core.inputs import owner_at
from surgery.ops.context import Kind, Role, RuleContext

__all__ = ["Kind", "Role", "Member", "Group", "ChannelGraph", "build_groups"]


@dataclass
class Member:
    """One layer dimension that a group touches.

    ``unit_index[p]`` is the group-local unit of position ``p`` along the layer's
    dimension (``-1`` when that position belongs to another group).
    """
    name: str
    role: Role
    kind: Kind
    type_name: str
    unit_index: np.ndarray = field(repr=False)

    def positions(self, unit: int) -> np.ndarray:
        return np.nonzero(self.unit_index == unit)[0]

    def describe(self) -> str:
        pos = np.nonzero(self.unit_index >= 0)[0]
        span = f"{len(pos)}/{len(self.unit_index)} positions"
        return f"{self.kind:<11} {self.name}.{self.role} ({self.type_name}, {span})"


@dataclass
class Group:
    """Channels that must be removed together, wherever they appear.

    ``size`` is the number of removable units; ``units`` holds their variable ids.
    A frozen group has ``prunable=False`` and a ``reason``. ``heads`` is True when each
    unit is a whole attention head (``attention="heads"``).
    """
    index: int
    units: np.ndarray
    members: list
    prunable: bool
    reason: str | None = None
    heads: bool = False

    @property
    def size(self) -> int:
        return len(self.units)

    def by_kind(self, *kinds: Kind) -> list:
        return [m for m in self.members if m.kind in kinds]

    @property
    def producers(self) -> list:
        return self.by_kind(Kind.PRODUCER)

    @property
    def consumers(self) -> list:
        return self.by_kind(Kind.CONSUMER)

    @property
    def anchor(self) -> Member:
        """The member that names this group in plans: its first producer, else its first member."""
        return (self.producers or self.members)[0]

    def __str__(self) -> str:
        state = "prunable" if self.prunable else f"frozen: {self.reason}"
        lines = [f"Group {self.index}: {self.size} {'heads' if self.heads else 'channels'}, {state}"]
        lines += [f"  {m.describe()}" for m in self.members]
        return "\n".join(lines)


@dataclass(eq=False)
class ChannelGraph:
    """The result of :func:`surgery.trace`: the traced module, its channel groups and what the
    rules recorded, complete when made (:func:`surgery.groups.build.trace` builds it).

    Example:
        >>> import torch, surgery
        >>> from models import create
        >>> g = surgery.trace(create("resnet20"), torch.randn(1, 3, 32, 32))
        >>> [grp.size for grp in g.groups][:3]
        [16, 16, 16]
    """
    gm: fx.GraphModule = field(repr=False)
    groups: list
    roots: np.ndarray = field(repr=False)  # variable -> union-find root (the unit it belongs to)
    slots: list = field(repr=False)  # every layer dimension the rules saw (Slot)
    patches: list = field(repr=False)  # literal sizes in the graph that follow their channels
    swaps: list = field(repr=False)  # (node, function, vars): calls swapped when their width changes
    norms: list = field(repr=False)  # (vars, what): normalisations over channels (verification is inexact)
    warnings: list = field(repr=False)
    head_vars: list = field(repr=False)  # one variable array per split into heads
    head_nodes: list = field(repr=False)
    front: str = "fx"  # "fx", "export" or "run" (the last two: aten-level graphs)
    attention: str = "dims"
    input_spec: list = field(default_factory=list, repr=False)
    example_inputs: Any = field(default=None, repr=False)

    @classmethod
    def from_context(cls, ctx: RuleContext, groups: list, roots: np.ndarray, **fields: Any) -> "ChannelGraph":
        """A graph holding what the rules recorded in ``ctx``."""
        return cls(ctx.gm, groups, roots, list(ctx.slots.values()), ctx.patches, ctx.swaps, ctx.norms,
                   ctx.warnings, ctx.head_vars, ctx.head_nodes, **fields)

    @property
    def prunable_groups(self) -> list:
        return [g for g in self.groups if g.prunable]

    def module(self, name: str) -> nn.Module:
        """``self.gm.get_submodule(name)``, from a table made once per traced module."""
        cache = self.__dict__.get("_modules_of")
        if cache is None or cache[0] is not self.gm:
            cache = (self.gm, dict(self.gm.named_modules(remove_duplicate=False)))
            self.__dict__["_modules_of"] = cache
        found = cache[1].get(name)
        return found if found is not None else self.gm.get_submodule(name)

    def groups_of(self, name: str, role: str = "out") -> list:
        """Groups touching layer ``name`` in ``role`` ("out", "in" or "dim<d>"): a layer's
        dimension can hold channels of several groups (a concat's consumer, say)."""
        return [g for g in self.groups if any(m.name == name and m.role == role for m in g.members)]

    def removed_mask(self, units: Any) -> np.ndarray:
        """``mask[v]`` is True for every variable whose unit is in ``units`` (removed): index it
        with ``graph.roots[vars]`` to ask which of a tensor's channels go."""
        gone = np.zeros(len(self.roots), dtype=bool)
        gone[np.asarray(units, dtype=np.int64)] = True
        return gone

    def owner_of(self, name: str) -> tuple[nn.Module, str]:
        """``(module, attribute)`` holding the parameter or buffer at dotted path ``name``."""
        return owner_at(self.gm, name)

    def summary(self) -> str:
        """One row per group: size, prunable or frozen (the full reason on the row below it,
        never cut), producers. ``print(graph)`` prints the same."""
        head = f"{'group':>5} {'size':>6}  {'state':<9} producers"
        rows = [head, "-" * 72]
        for g in self.groups:
            prods = ", ".join(m.name for m in g.producers) or "-"
            size = f"{g.size}h" if g.heads else str(g.size)
            rows.append(f"{g.index:>5} {size:>6}  {'prunable' if g.prunable else 'frozen':<9} "
                        f"{textwrap.shorten(prods, 60, placeholder=' ...')}")
            if not g.prunable:
                rows += textwrap.wrap(g.reason, 72, initial_indent=" " * 15 + "why: ", subsequent_indent=" " * 20)
        rows.append(f"{len(self.groups)} groups, {len(self.prunable_groups)} prunable"
                    + (" (size 'Nh': N whole attention heads)" if any(g.heads for g in self.groups) else ""))
        return "\n".join(rows)

    def __str__(self) -> str:
        return self.summary()


def build_groups(ctx: RuleContext) -> tuple[list, np.ndarray]:
    """Units are union-find roots; units touching the same slots form one group.

    Vectorised: each unit's set of slots is summarised by a sum of random 64-bit keys, and
    the grouping is then checked exactly (every unit of a group touches exactly the group's
    slots), falling back to comparing the sets themselves on a collision."""
    roots = ctx.vars.roots()
    frozen = ctx.vars.frozen_roots(roots)
    slots = list(ctx.slots.values())
    slot_roots = [roots[s.vars] for s in slots]
    unit, slot_of = _incidence(slot_roots)
    first = np.flatnonzero(np.diff(unit, prepend=-1))  # the pairs are sorted by unit
    units, counts = unit[first], np.diff(np.append(first, len(unit)))
    is_frozen = np.isin(units, np.fromiter(frozen, dtype=np.int64, count=len(frozen)))
    label = _signature_labels(slot_of, first, counts, is_frozen, len(slots))
    head_roots = np.unique(roots[np.concatenate(ctx.head_vars)]) if ctx.head_vars else None
    notes = [(set(roots[v].tolist()), why) for v, why in ctx.notes]
    order = np.argsort(label, kind="stable")  # units by group label, ascending within one
    bounds = np.flatnonzero(np.diff(label[order])) + 1
    found = []
    for members in np.split(order, bounds):
        sig = tuple(slot_of[first[members[0]]:first[members[0]] + counts[members[0]]].tolist())
        found.append((sig, bool(is_frozen[members[0]]), units[members]))
    groups = []
    for sig, frozen_group, group_units in sorted(found, key=lambda f: (f[0], int(f[2][0]))):
        members = [_member(slots[si], slot_roots[si], group_units) for si in sig]
        reason = None
        if frozen_group:
            unit_set = set(group_units.tolist())
            reason = "; ".join([frozen[int(group_units[0])]] + sorted({why for r, why in notes if r & unit_set}))
        heads = head_roots is not None and bool(np.isin(group_units, head_roots).all())
        groups.append(Group(len(groups), group_units, members, not frozen_group, reason, heads))
    return groups, roots


def _incidence(slot_roots: list) -> tuple[np.ndarray, np.ndarray]:
    """Every distinct (unit, slot) pair, sorted by unit then slot: two aligned arrays."""
    n = max(len(slot_roots), 1)
    pairs = np.sort(np.concatenate([r.astype(np.int64) * n + i for i, r in enumerate(slot_roots)]
                                   or [np.zeros(0, dtype=np.int64)]))
    pairs = pairs[np.diff(pairs, prepend=-1) != 0]
    return pairs // n, pairs % n


def _signature_labels(slot_of: np.ndarray, first: np.ndarray, counts: np.ndarray, is_frozen: np.ndarray,
                      n_slots: int) -> np.ndarray:
    """One label per unit: equal labels exactly when two units touch the same slots and are
    both frozen or both not."""
    keys = np.random.default_rng(0).integers(0, 2 ** 63, size=n_slots, dtype=np.uint64)
    sums = np.add.reduceat(keys[slot_of], first) if len(first) else np.zeros(0, dtype=np.uint64)
    columns = (is_frozen.astype(np.int64), counts, sums.view(np.int64))
    order = np.lexsort(columns)
    step = np.zeros(len(order), dtype=np.int64)
    for column in columns:
        step[1:] |= column[order][1:] != column[order][:-1]
    label = np.empty(len(order), dtype=np.int64)
    label[order] = np.cumsum(step)
    if _exact(slot_of, first, counts, label):
        return label
    sigs = [tuple(slot_of[f:f + c].tolist()) + (bool(z),) for f, c, z in zip(first, counts, is_frozen)]
    index: dict = {}
    return np.array([index.setdefault(s, len(index)) for s in sigs], dtype=np.int64)


def _exact(slot_of: np.ndarray, first: np.ndarray, counts: np.ndarray, label: np.ndarray) -> bool:
    """True when every unit's slots equal those of the first unit with its label (no key-sum
    collision): units of one label have one count, so comparing slot by slot suffices."""
    if not len(label):
        return True
    _, rep = np.unique(label, return_index=True)
    rep_of = rep[label]
    if not np.array_equal(counts, counts[rep_of]):
        return False
    offsets = np.arange(len(slot_of)) - np.repeat(first, counts)
    return bool(np.array_equal(slot_of, slot_of[np.repeat(first[rep_of], counts) + offsets]))


def _member(slot, slot_roots: np.ndarray, units: np.ndarray) -> Member:
    idx = np.searchsorted(units, slot_roots)
    idx_c = np.minimum(idx, len(units) - 1)
    unit_index = np.where(units[idx_c] == slot_roots, idx_c, -1)
    return Member(slot.name, slot.role, slot.kind, "", unit_index)
