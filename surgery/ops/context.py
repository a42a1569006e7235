"""What a rule sees: the node, its inputs' shapes and channel axes, and the
operations it may perform (fresh variables, unify, freeze, record slots and patches).

Channel axes of a tensor are a dict ``{dim: vars}`` where ``vars`` is a 1-D array of
variable ids as long as the tensor's size at ``dim``. An empty dict is a tensor whose
channels are not tracked (a model input, a constant). Non-tensors have ``None`` and
tuples/lists of tensors have a list of axes.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn

from surgery.core.errors import ArgumentError
from surgery.ops.variables import VarTable

__all__ = ["first_input", "freeze_other_dims", "Axes", "Kind", "Role", "Slot", "Patch", "RuleContext", "TensorMeta", "AXES_KEY", "VALUE_KEY"]

Axes = dict  # dict[int, np.ndarray]
AXES_KEY = "surgery.axes"
VALUE_KEY = "surgery.value"
CONSTANT_KEY = "surgery.constant"  # a get_attr node that reads a tensor the forward made, not the model's


@dataclass(frozen=True)
class TensorMeta:
    """What shape propagation records for a tensor value (other values are kept as-is)."""
    shape: torch.Size
    dtype: torch.dtype


class Kind(str, Enum):
    """What a layer dimension does with a group's channels."""
    PRODUCER = "producer"        # creates them: conv/linear output
    CONSUMER = "consumer"        # reads them: conv/linear input
    PER_CHANNEL = "per_channel"  # one parameter per channel: BN, LayerNorm, PReLU
    PARAM = "param"              # a raw parameter read through get_attr

    @property
    def part(self) -> str:
        """The :class:`criteria.GroupView` part holding this kind's slices."""
        return {"producer": "producers", "consumer": "consumers"}.get(self.value, "per_channel")

    def __str__(self) -> str:
        return self.value


class Role(str):
    """Which dimension of a layer: ``"out"``, ``"in"`` or ``"dim<d>"`` (a raw parameter's
    dim ``d``). A ``str`` (so plans stay plain JSON) with ``side`` and ``dim`` parsed once.

    Example:
        >>> Role("dim2").dim, Role("out").side
        (2, 'out')
    """
    _PATTERN = re.compile(r"^(out|in)$|^dim(\d+)$")

    def __new__(cls, value: str) -> "Role":
        if not isinstance(value, str) or not cls._PATTERN.match(value):
            raise ArgumentError(f"a role is 'out', 'in' or 'dim<d>', got {value!r}")
        return super().__new__(cls, value)

    @classmethod
    def param(cls, dim: int) -> "Role":
        return cls(f"dim{dim}")

    @property
    def side(self) -> str:
        return "dim" if self.startswith("dim") else str(self)

    @property
    def dim(self) -> int | None:
        return int(self[3:]) if self.startswith("dim") else None


@dataclass
class Slot:
    """One prunable dimension of one layer or parameter.

    ``kind`` is ``"producer"`` (creates the channels: conv/linear output),
    ``"consumer"`` (reads them: conv/linear input), ``"per_channel"`` (BN, LayerNorm,
    PReLU, depthwise) or ``"param"`` (a raw parameter read through ``get_attr``).
    """
    name: str
    role: Role
    kind: Kind
    vars: np.ndarray


@dataclass
class Patch:
    """A literal in the traced code that must become the count of kept ``vars``."""
    node: str
    path: tuple
    vars: np.ndarray


@dataclass
class RuleContext:
    gm: fx.GraphModule
    vars: VarTable = field(default_factory=VarTable)
    slots: dict = field(default_factory=dict)   # (name, role) -> Slot
    patches: list = field(default_factory=list)
    norms: list = field(default_factory=list)   # (description, vars, node name): statistics over these channels
    warnings: list = field(default_factory=list)
    node: fx.Node | None = None
    attention: str = "dims"                         # "dims" or "heads": how head splits are pruned
    head_splits: set = field(default_factory=set)   # reshape nodes that split channels into heads
    head_vars: list = field(default_factory=list)   # one variable per head, per head split
    head_nodes: list = field(default_factory=list)  # the node of each head split
    notes: list = field(default_factory=list)       # (vars, why): added to the reason if they end frozen
    swaps: list = field(default_factory=list)       # (node, function, vars): call function once vars lose any
    model: nn.Module | None = None  # the traced model: its layers by name (gm holds empty containers for
                                    # layers the trace went through)

    def split_heads(self) -> bool:
        """Whether the current reshape splits channels into whole, removable heads."""
        return self.attention == "heads" and self.node is not None and self.node.name in self.head_splits

    # --- reading inputs -------------------------------------------------
    def axes(self, arg: Any) -> Any:
        return arg.meta.get(AXES_KEY) if isinstance(arg, fx.Node) else None

    def value(self, arg: Any) -> Any:
        """A node's recorded value summary (shape for tensors), or the literal itself."""
        return arg.meta.get(VALUE_KEY) if isinstance(arg, fx.Node) else arg

    def shape(self, arg: Any) -> torch.Size | None:
        v = self.value(arg)
        return v.shape if isinstance(v, TensorMeta) else None

    def out_shape(self) -> torch.Size | None:
        return self.shape(self.node)

    def module(self) -> nn.Module:
        return self.gm.get_submodule(self.node.target)

    def arg(self, index: int, name: str, default: Any = None) -> Any:
        """Positional-or-keyword argument of the current node."""
        if len(self.node.args) > index:
            return self.node.args[index]
        return self.node.kwargs.get(name, default)

    # --- acting ---------------------------------------------------------
    def fresh(self, n: int) -> np.ndarray:
        return self.vars.new(n)

    def unify(self, a: np.ndarray, b: np.ndarray) -> None:
        self.vars.unify(a, b)

    def freeze(self, vars_: np.ndarray, why: str) -> None:
        self.vars.freeze(vars_, f"{why} (node '{self.node.name}')")

    def freeze_all(self, axes: Any, why: str) -> None:
        """Freeze every variable found in (nested) axes."""
        for v in iter_vars(axes):
            self.freeze(v, why)

    def add_heads(self, vars_: np.ndarray) -> None:
        """Record a split into whole heads (one variable per head) at the current node."""
        self.head_vars.append(np.array(vars_, dtype=np.int64))
        self.head_nodes.append(self.node.name)

    def is_heads(self, vars_: np.ndarray) -> bool:
        """Whether these variables are (unified with) a recorded split into whole heads."""
        if not self.head_vars or not len(vars_):
            return False
        roots = {self.vars.find(int(v)) for hv in self.head_vars for v in hv}
        return self.vars.find(int(vars_[0])) in roots

    def note(self, vars_: np.ndarray, why: str) -> None:
        """Explain these channels if something else freezes them (a layout that ties heads
        to the stream, say): the note is added to their group's frozen reason."""
        self.notes.append((np.asarray(vars_, dtype=np.int64), why))

    def add_slot(self, name: str, role: str, kind: str, vars_: np.ndarray) -> np.ndarray:
        """Record a layer dimension; a second call for the same slot unifies."""
        key = (name, role)
        if key in self.slots:
            self.unify(self.slots[key].vars, vars_)
            return self.slots[key].vars
        self.slots[key] = Slot(name, Role(role), Kind(kind), np.asarray(vars_, dtype=np.int64))
        return vars_

    def add_swap(self, function: Any, vars_: np.ndarray) -> None:
        """Once any of ``vars_`` is removed, the current node must call ``function`` (same
        arguments) instead of its own target: a general version of a function whose code
        ties sizes the pruned model no longer has (the rewrite then returns a GraphModule)."""
        self.swaps.append((self.node.name, function, np.asarray(vars_, dtype=np.int64)))

    def add_patch(self, path: tuple, vars_: np.ndarray) -> None:
        self.patches.append(Patch(self.node.name, path, np.asarray(vars_, dtype=np.int64)))

    def mark_norm(self, vars_: np.ndarray, what: str) -> None:
        """Record that an op normalises over these channels (LayerNorm, GroupNorm with one
        group): removing any of them changes the statistics, so the rewrite cannot be exact."""
        self.norms.append((f"{what} (node '{self.node.name}')", np.asarray(vars_, dtype=np.int64), self.node.name))

    def warn(self, message: str) -> None:
        self.warnings.append(f"node '{self.node.name}' ({_describe(self.node)}): {message}")


def iter_vars(axes: Any):
    """Yield every variable array inside nested axes."""
    if isinstance(axes, dict):
        yield from axes.values()
    elif isinstance(axes, (list, tuple)):
        for a in axes:
            yield from iter_vars(a)


def _describe(node: fx.Node) -> str:
    target = node.target
    if callable(target):
        target = getattr(target, "__qualname__", None) or getattr(target, "__name__", repr(target))
    return f"{node.op} {target}"


def first_input(ctx: RuleContext, node: fx.Node) -> tuple[dict, tuple]:
    """``(axes, shape)`` of a layer call's first input."""
    x = node.args[0] if node.args else next(iter(node.kwargs.values()))
    return ctx.axes(x) or {}, ctx.shape(x)


def freeze_other_dims(ctx: RuleContext, axes: dict, keep: int) -> None:
    """Freeze the channels of every dim but ``keep``: the layer mixes or resizes them."""
    for d, v in axes.items():
        if d != keep:
            ctx.freeze(v, "a layer mixes or resizes this dim")
