"""Run the channel rules over a traced, shape-propagated graph."""
from __future__ import annotations

from typing import Any

import torch.fx as fx
import torch.nn as nn

from surgery.core.inputs import owner_at
from surgery.ops.attention import head_splits
from surgery.ops.context import AXES_KEY, CONSTANT_KEY, RuleContext, TensorMeta, iter_vars
from surgery.ops.registry import function_rule, lookup_layer, method_rule, rule_for
from surgery.ops.shape_ops import SIZE_OF, SIZE_TAKERS

__all__ = ["analyse"]


def analyse(gm: fx.GraphModule, attention: str = "dims", model: nn.Module | None = None) -> RuleContext:
    """Annotate every node with ``node.meta["surgery.axes"]`` and collect slots/patches.
    ``attention="heads"`` makes whole heads the units of the reshapes that feed attention;
    ``model``: the traced model, whose layers say which dims of their raw tensors are channels."""
    ctx = RuleContext(gm, attention=attention, model=model)
    if attention == "heads":
        ctx.head_splits = head_splits(gm)
    for node in gm.graph.nodes:
        ctx.node = node
        node.meta[AXES_KEY] = _run(ctx, node)
    for node in gm.graph.nodes:
        if SIZE_OF in node.meta:
            ctx.node = node
            _freeze_sizes_used_as_values(ctx, node)
    return ctx


def _freeze_sizes_used_as_values(ctx: RuleContext, size: fx.Node) -> None:
    """A size read at run time from a tracked dim (``x.size(1)``, ``x.numel()``, ``x.shape[-1]``)
    changes value when channels go; a read of other dims (``x.shape[-2:]``) does not. Through
    reshape sizes it is followed (shape_ops); when it reaches any other tensor (``y / x.size(1)``,
    ``q * x.shape[-1] ** -0.5``) the dim is frozen. A size computed from it (``C // heads``) is
    followed only into a reshape of the tensor it was read from (a channel shuffle); in a
    reshape of another tensor (``v.reshape(B, heads, C // heads, ...)``) both are frozen."""
    src, dim = size.meta[SIZE_OF]
    axes = ctx.axes(src) or {}
    dims = list(axes) if dim is None else [dim] if isinstance(dim, int) else list(dim)
    tracked = [axes[d] for d in dims if d in axes]  # a read of H or W says nothing about channels
    others: list = []
    if not tracked or not _reaches_a_value(ctx, size, set(), src, False, others):
        return
    for v in tracked:
        ctx.freeze(v, f"its size is read at run time ('{size.name}') and used as a value")
    for reshaped in others:
        ctx.freeze_all(ctx.axes(reshaped), f"reshaped with a size computed from another tensor's channel count "
                                            f"('{size.name}')")


def _reaches_a_value(ctx: RuleContext, node: fx.Node, seen: set, src: fx.Node, derived: bool,
                     others: list) -> bool:
    """Whether the size ``node`` (read from ``src``) reaches a tensor as a value; reshapes of
    other tensors that a computed size reaches go into ``others``."""
    for user in node.users:
        if user in seen or user.op == "output" or SIZE_OF in user.meta:
            continue  # outputs freeze on their own; other size nodes are checked themselves
        seen.add(user)
        if isinstance(ctx.value(user), TensorMeta):
            if not (user.target in SIZE_TAKERS and node not in user.args[:1]):
                return True
            if derived and user.args[0] is not src:
                others.append(user.args[0])
                return True
        elif _reaches_a_value(ctx, user, seen, src, True, others):
            return True
    return False


def _untracked(value: Any) -> Any:
    if isinstance(value, TensorMeta):
        return {}
    if isinstance(value, list):
        return [_untracked(v) for v in value]
    return None


def _run(ctx: RuleContext, node: fx.Node) -> Any:
    if node.op == "placeholder":
        return _untracked(ctx.value(node))
    if node.op == "get_attr":
        return _get_attr(ctx, node)
    if node.op == "output":
        ctx.freeze_all([ctx.axes(a) for a in _flat_nodes(node.args)], "reaches the model output")
        return None
    rule = _rule_for(ctx, node)
    if rule is None:
        return _unknown(ctx, node)
    return rule(ctx, node)


def _rule_for(ctx: RuleContext, node: fx.Node):
    if node.op == "call_module":
        return rule_for(ctx.gm.get_submodule(node.target))
    if node.op == "call_method":
        return method_rule(node.target)
    return function_rule(node.target)


def _flat_nodes(args: Any) -> list:
    out: list = []
    fx.node.map_arg(args, out.append)
    return out


def _unknown(ctx: RuleContext, node: fx.Node) -> Any:
    """No rule: freeze every tracked input channel; the output is untracked."""
    tracked = [ctx.axes(a) for a in _flat_nodes((node.args, node.kwargs))]
    if any(True for _ in iter_vars(tracked)):
        what = _what(ctx, node)
        ctx.freeze_all(tracked, f"no channel rule for {what}")
        ctx.warn(f"no channel rule for {what}; channels that reach it are frozen. "
                 f"Register one with {_how(node)} to prune through it.")
    return _untracked(ctx.value(node))


def _what(ctx: RuleContext, node: fx.Node) -> str:
    if node.op == "call_module":
        return f"module type {type(ctx.gm.get_submodule(node.target)).__name__}"
    if node.op == "call_method":
        return f"tensor method '.{node.target}()'"
    return f"function {getattr(node.target, '__module__', '')}.{getattr(node.target, '__name__', node.target)}"


def _how(node: fx.Node) -> str:
    if node.op == "call_module":
        return "surgery.extend.register_layer(<type>, rule=..., handler=...)"
    if node.op == "call_method":
        return f"surgery.extend.register_method('{node.target}')"
    return "surgery.extend.register_function(<function>)"


def _get_attr(ctx: RuleContext, node: fx.Node) -> Any:
    """A parameter or buffer read in forward: every dim of size > 1 may be sliced, except the
    dims its layer's handler never slices (a conv subclass's kernel dims, read by its own
    forward: weight standardisation's ``weight.reshape(1, out, -1)`` would merge them with
    the input channels and freeze those)."""
    shape = ctx.shape(node)
    if shape is None:
        return None
    if not ctx.value(node).dtype.is_floating_point or node.meta.get(CONSTANT_KEY):
        return {}  # index tables, masks, tensors the forward made: data, not channels
    sliced = _handler_dims(ctx.model, node.target) if ctx.model is not None else None
    axes = {}
    for d, n in enumerate(shape):
        if n > 1 and (sliced is None or d in sliced):
            axes[d] = ctx.add_slot(node.target, f"dim{d}", "param", ctx.fresh(n))
    return axes


def _handler_dims(root: nn.Module, target: str) -> set | None:
    """The dims of the tensor at ``target`` that its module's handler indexes on either side
    (``tensor_dims``), or None when that is not known (no handler, or a side it cannot say)."""
    try:
        module, attr = owner_at(root, target)
    except AttributeError:
        return None
    entry, _ = lookup_layer(module)
    handler = entry.handler if entry is not None else None
    if handler is None:
        return None
    sides = [handler.tensor_dims(module, role) for role in ("in", "out")]
    if any(listed is None for listed in sides):
        return None
    dims = {d for listed in sides for name, d in listed if name == attr}
    return dims or None  # a tensor the handler does not index: every dim, as before
