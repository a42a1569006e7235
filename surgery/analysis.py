"""Run the channel rules over a traced, shape-propagated graph."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.fx as fx

from surgery.rules.context import AXES_KEY, RuleContext, TensorMeta, iter_vars
from surgery.rules.registry import function_rule_for, method_rule_for, module_rule_for

__all__ = ["analyse"]


def analyse(gm: fx.GraphModule) -> RuleContext:
    """Annotate every node with ``node.meta["surgery.axes"]`` and collect slots/patches."""
    ctx = RuleContext(gm)
    for node in gm.graph.nodes:
        ctx.node = node
        node.meta[AXES_KEY] = _run(ctx, node)
    return ctx


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
        return module_rule_for(ctx.gm.get_submodule(node.target))
    if node.op == "call_method":
        return method_rule_for(node.target)
    return function_rule_for(node.target)


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
        return "surgery.extend.register_module_rule(<type>) and surgery.extend.register_handler(<type>)"
    if node.op == "call_method":
        return f"surgery.extend.register_method_rule('{node.target}')"
    return "surgery.extend.register_function_rule(<function>)"


def _get_attr(ctx: RuleContext, node: fx.Node) -> Any:
    """A parameter or buffer read in forward: every dim of size > 1 may be sliced."""
    shape = ctx.shape(node)
    if shape is None:
        return None
    axes = {}
    for d, n in enumerate(shape):
        if n > 1:
            axes[d] = ctx.add_slot(node.target, f"dim{d}", "param", ctx.fresh(n))
    return axes
