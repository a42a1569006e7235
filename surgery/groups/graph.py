"""Channel groups: coupled units of channel variables, and the ChannelGraph that holds them."""
from __future__ import annotations

from collections import defaultdict
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
    """Units are union-find roots; units touching the same slots form one group."""
    roots = ctx.vars.roots()
    frozen = ctx.vars.frozen_roots(roots)
    slots = list(ctx.slots.values())
    slot_roots = [roots[s.vars] for s in slots]
    touching: dict = defaultdict(list)
    for si, r in enumerate(slot_roots):
        for u in np.unique(r).tolist():
            touching[u].append(si)
    by_sig: dict = defaultdict(list)
    for u, sl in touching.items():
        by_sig[(tuple(sl), u in frozen)].append(u)
    head_roots = set(roots[np.concatenate(ctx.head_vars)].tolist()) if ctx.head_vars else set()
    notes = [(set(roots[v].tolist()), why) for v, why in ctx.notes]
    groups = []
    for (sig, is_frozen), units in sorted(by_sig.items(), key=lambda kv: (kv[0][0], min(kv[1]))):
        units = np.array(sorted(units), dtype=np.int64)
        members = [_member(slots[si], slot_roots[si], units) for si in sig]
        reason = next((frozen[u] for u in units.tolist() if u in frozen), None)
        if reason is not None:
            reason = "; ".join([reason] + sorted({why for roots_, why in notes if roots_ & set(units.tolist())}))
        heads = bool(head_roots) and all(u in head_roots for u in units.tolist())
        groups.append(Group(len(groups), units, members, not is_frozen, reason, heads))
    return groups, roots


def _member(slot, slot_roots: np.ndarray, units: np.ndarray) -> Member:
    idx = np.searchsorted(units, slot_roots)
    idx_c = np.minimum(idx, len(units) - 1)
    unit_index = np.where(units[idx_c] == slot_roots, idx_c, -1)
    return Member(slot.name, slot.role, slot.kind, "", unit_index)
