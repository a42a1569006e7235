"""Tied tensors: one parameter (or buffer) reached through several slots or owners.

``couple_shared_tensors`` unifies the channels of slots that index the same tensor along
the same dim (``head.weight = emb.weight``; ``F.linear(z, layer.weight)`` next to the
layer itself), and freezes them where the sharing cannot be described. ``shared_owners``
lists where each shared tensor lives, so the rewrite can keep them one object.
"""
from __future__ import annotations

from collections import defaultdict

import torch.fx as fx
import torch.nn as nn

from surgery.core.inputs import tensor_at
from surgery.ops.registry import handler_for
from surgery.ops.context import Kind, Role, RuleContext

__all__ = ["couple_shared_tensors", "shared_owners", "retie"]


def shared_owners(root: nn.Module) -> list:
    """``[[(module name, attribute), ...], ...]`` for every tensor held under several names."""
    where: dict = defaultdict(list)
    holders: dict = defaultdict(set)  # id(tensor) -> ids of the modules holding it
    for name, module in root.named_modules(remove_duplicate=False):
        for attr, t in list(module._parameters.items()) + list(module._buffers.items()):
            if t is not None and (name, attr) not in where[id(t)]:
                where[id(t)].append((name, attr))
                holders[id(t)].add(id(module))
    return [owners for tid, owners in where.items() if len(holders[tid]) > 1]


def _owner(root: nn.Module, name: str) -> nn.Module:
    return root.get_submodule(name) if name else root


def couple_shared_tensors(ctx: RuleContext, gm: fx.GraphModule) -> None:
    """Unify slots indexing one tensor along one dim; freeze slots of a shared tensor whose
    layout is unknown, or whose other owners are not traced (they would come apart)."""
    by_tensor: dict = defaultdict(list)  # id(tensor) -> [(slot, dim)]
    unknown: dict = defaultdict(list)
    for slot in ctx.slots.values():
        for t, dim in _tensors_of(gm, slot):
            (unknown if dim is None else by_tensor)[id(t)].append((slot, dim))
    shared = {id(getattr(_owner(gm, owners[0][0]), owners[0][1])): owners for owners in shared_owners(gm)}
    for tid, entries in by_tensor.items():
        first: dict = {}
        for slot, dim in entries:
            if dim in first and len(first[dim].vars) == len(slot.vars):
                ctx.vars.unify(first[dim].vars, slot.vars)
            first.setdefault(dim, slot)
        if tid in shared:
            owners = {n for n, _ in shared[tid]}
            for slot, dim in entries:  # every owner must follow a pruned dim, or none may prune it
                if {_owner_name(s) for s, d in entries if d == dim} != owners:
                    ctx.vars.freeze(slot.vars, f"'{slot.name}' shares a tensor with a layer whose channels along "
                                               f"that dim are not tracked (tied weights)")
    _freeze_untracked_sides(ctx, gm)
    for tid, entries in unknown.items():
        names = {slot.name for slot, _ in entries + by_tensor.get(tid, [])}
        if tid in shared or len(names) > 1:  # several layers index it: a tie we cannot describe
            for slot, _ in entries:
                ctx.vars.freeze(slot.vars, f"'{slot.name}' shares a tensor (tied weights) in a layout the "
                                           f"engine cannot follow")


def _freeze_untracked_sides(ctx: RuleContext, gm: fx.GraphModule) -> None:
    """A layer's weight also read directly (``self.conv.weight.dtype``, a weight reused in
    another op) gets a slot per dim. Along a dim that is the layer's input (or output) side,
    the layer must follow; when the graph gave the layer no slot for that side (it reads a
    tensor whose channels are not tracked, such as positions computed in forward), the dim
    cannot be pruned."""
    called = {n.target for n in gm.graph.nodes if n.op == "call_module"}
    for slot in [s for s in ctx.slots.values() if s.kind == Kind.PARAM]:
        owner, _, attr = slot.name.rpartition(".")
        if owner not in called:
            continue
        module = gm.get_submodule(owner)
        for side in ("in", "out"):
            try:
                dims = handler_for(module).tensor_dims(module, Role(side)) or []
            except (TypeError, AttributeError):
                continue
            if (attr, slot.role.dim) in dims and (owner, side) not in ctx.slots:
                ctx.vars.freeze(slot.vars, f"'{slot.name}' is read directly, and along dim {slot.role.dim} it is "
                                           f"the {side}put side of '{owner}', whose {side}put channels are not tracked")


def _owner_name(slot) -> str:
    return slot.name.rpartition(".")[0] if slot.kind == Kind.PARAM else slot.name


def _tensors_of(gm: fx.GraphModule, slot) -> list:
    """``[(tensor, dim or None)]`` that a slot indexes."""
    if slot.kind == Kind.PARAM:
        return [(tensor_at(gm, slot.name), slot.role.dim)]
    module = gm.get_submodule(slot.name)
    try:
        dims = handler_for(module).tensor_dims(module, slot.role)
    except TypeError:
        dims = None
    if dims is None:
        return [(t, None) for t in list(module._parameters.values()) + list(module._buffers.values())
                if t is not None]
    return [(getattr(module, attr), d) for attr, d in dims]


def retie(root: nn.Module, ties: list) -> None:
    """Tensors that were one object before the rewrite are one object after it."""
    for owners in ties:
        first = getattr(root.get_submodule(owners[0][0]) if owners[0][0] else root, owners[0][1])
        for name, attr in owners[1:]:
            module = root.get_submodule(name) if name else root
            if getattr(module, attr).shape != first.shape:
                raise RuntimeError(f"internal error: tied tensors {owners[0]} and {(name, attr)} were pruned "
                                   f"differently; please report this model")
            (module._parameters if attr in module._parameters else module._buffers)[attr] = first
