"""Rules for functional layers whose weights are read through ``get_attr``: what a
traced-through custom layer (or a subclass that overrides ``forward``) calls."""
from __future__ import annotations

import numpy as np
import torch.fx as fx
import torch.nn.functional as F

from surgery.ops.context import RuleContext
from surgery.ops.elementwise import broadcast_axes
from surgery.ops.norm import whole_groups
from surgery.ops.registry import register_function

__all__ = ["layer_norm_fn", "linear_fn", "conv_fn", "batch_norm_fn", "group_norm_fn"]


def _operand(ctx: RuleContext, arg):
    shape = ctx.shape(arg)
    return None if shape is None else (ctx.axes(arg) or {}, shape)


def layer_norm_fn(ctx: RuleContext, node: fx.Node):
    """F.layer_norm(x, shape, weight, bias): per-channel over one trailing dim."""
    x, shape = _operand(ctx, node.args[0])
    k = len(ctx.value(ctx.arg(1, "normalized_shape")))  # a literal, or a size computed at run time
    params = [p for p in (_operand(ctx, ctx.arg(2, "weight")), _operand(ctx, ctx.arg(3, "bias"))) if p]
    if k > 1:
        for axes, _ in [(x, shape)] + params:
            ctx.freeze_all([{d: v for d, v in axes.items()}], "layer_norm over several dims")
        return {d: v for d, v in x.items() if d < len(shape) - k}
    out = broadcast_axes(ctx, [(x, shape)] + params, ctx.out_shape())
    last = out.get(len(shape) - 1)
    if last is not None:
        ctx.mark_norm(last, "F.layer_norm")
        _patch_normalized_shape(ctx, node, last)
    return out


def _patch_normalized_shape(ctx: RuleContext, node: fx.Node, last: np.ndarray) -> None:
    """The literal ``normalized_shape`` follows the kept channels; a computed one freezes them."""
    literal = ctx.arg(1, "normalized_shape")
    path = ("args", 1) if len(node.args) > 1 else ("kwargs", "normalized_shape")
    if isinstance(literal, (tuple, list)) and all(isinstance(n, int) for n in literal):
        ctx.add_patch(path + (0,), last)
    elif isinstance(literal, int):
        ctx.add_patch(path, last)
    else:
        ctx.freeze(last, "layer_norm's normalized_shape is computed at run time")


def linear_fn(ctx: RuleContext, node: fx.Node):
    """F.linear(x, weight[out, in], bias[out])."""
    x, shape = _operand(ctx, node.args[0])
    w = _operand(ctx, ctx.arg(1, "weight"))
    b = _operand(ctx, ctx.arg(2, "bias"))
    last = len(shape) - 1
    w_axes = w[0] if w else {}
    if last in x and 1 in w_axes:
        ctx.unify(x[last], w_axes[1])
    elif last in x or 1 in w_axes:
        ctx.freeze_all([{0: x.get(last)} if last in x else {}, {1: w_axes.get(1)} if 1 in w_axes else {}],
                       "linear with an untracked operand")
    out = {d: v for d, v in x.items() if d != last}
    if 0 in w_axes:
        out[last] = w_axes[0]
    _bias_follows_weight(ctx, w_axes, b)
    return out


def _bias_follows_weight(ctx: RuleContext, w_axes: dict, b) -> None:
    """The bias's channels are the weight's rows: one variable, or frozen when the weight
    comes from an op without a rule (its rows cannot be sliced, so neither can the bias)."""
    if not b or 0 not in b[0]:
        return
    if 0 in w_axes:
        ctx.unify(w_axes[0], b[0][0])
    else:
        ctx.freeze(b[0][0], "bias of a weight computed by an op without a channel rule")


def conv_fn(ctx: RuleContext, node: fx.Node):
    """F.conv*d(x, weight[out, in/g, ...], bias, ..., groups), as the conv layer's rule: groups=1
    a consumer and a producer; depthwise (one input channel per group) each output row follows
    its input channel and the ``groups`` literal follows the kept count; other grouped convs
    remove the same positions in every group. Kernel dims and a computed ``groups`` freeze."""
    x, shape = _operand(ctx, node.args[0])
    w = _operand(ctx, ctx.arg(1, "weight"))
    b = _operand(ctx, ctx.arg(2, "bias"))
    groups = ctx.arg(6, "groups", 1)
    w_axes = w[0] if w else {}
    if not w or not isinstance(groups, int) or len(shape) < 2 or shape[1] % groups or w[1][0] % groups:
        ctx.freeze_all([x, w_axes, b[0] if b else {}], "functional conv with a computed groups or untracked weight")
        return {}
    for d, v in x.items():
        if d != 1:
            ctx.freeze(v, "conv over a channel dim")
    for d, v in w_axes.items():
        if d >= 2:
            ctx.freeze(v, "a conv kernel's spatial dim")
    if groups == 1:
        out = linear_fn_like(ctx, x.get(1), w_axes)
    elif shape[1] == groups:
        out = _depthwise(ctx, node, x.get(1), w_axes, w[1][0] // groups)
    else:
        out = _grouped(ctx, x.get(1), w_axes, groups)
    _bias_follows_weight(ctx, w_axes, b)
    return out


def _depthwise(ctx: RuleContext, node: fx.Node, in_vars, w_axes: dict, multiplier: int) -> dict:
    """Output row ``i * multiplier + j`` is input channel ``i``'s: one unit per input channel."""
    if 1 in w_axes:
        ctx.freeze(w_axes[1], "a depthwise kernel's single input slot")
    if in_vars is None or 0 not in w_axes:
        ctx.freeze_all([{0: in_vars} if in_vars is not None else {}, {0: w_axes.get(0)} if 0 in w_axes else {}],
                       "depthwise conv with an untracked operand")
        return {}
    ctx.unify(np.repeat(in_vars, multiplier), w_axes[0])
    ctx.add_patch(("args", 6) if len(node.args) > 6 else ("kwargs", "groups"), in_vars)
    return {1: w_axes[0]}


def _grouped(ctx: RuleContext, in_vars, w_axes: dict, groups: int) -> dict:
    """The same positions go in every group, on the input and on the output side."""
    if in_vars is not None and 1 in w_axes:
        blocks = in_vars.reshape(groups, -1)
        for row in blocks:
            ctx.unify(row, w_axes[1])
    elif in_vars is not None or 1 in w_axes:
        ctx.freeze(in_vars if in_vars is not None else w_axes[1], "grouped conv with an untracked operand")
    if 0 not in w_axes:
        return {}
    rows = w_axes[0].reshape(groups, -1)
    for row in rows[1:]:
        ctx.unify(rows[0], row)
    return {1: w_axes[0]}


def linear_fn_like(ctx: RuleContext, in_vars, w_axes: dict) -> dict:
    if in_vars is not None and 1 in w_axes:
        ctx.unify(in_vars, w_axes[1])
    elif in_vars is not None or 1 in w_axes:
        ctx.freeze(in_vars if in_vars is not None else w_axes[1], "conv with an untracked operand")
    return {1: w_axes[0]} if 0 in w_axes else {}


def batch_norm_fn(ctx: RuleContext, node: fx.Node):
    """F.batch_norm / F.instance_norm(x, mean, var, weight, bias): per-channel on dim 1."""
    x, shape = _operand(ctx, node.args[0])
    out = dict(x)
    names = ("running_mean", "running_var", "weight", "bias")  # positional or keyword (timm's norm-act)
    for arg in (ctx.arg(i, name) for i, name in enumerate(names, start=1)):
        p = _operand(ctx, arg)
        if p and 0 in p[0]:
            if 1 in x:
                ctx.unify(x[1], p[0][0])
            else:
                ctx.freeze(p[0][0], "per-channel statistics of an untracked tensor")
    if ctx.arg(5, "training", False) is not False:  # batch statistics: the other dims are averaged over
        for d, v in x.items():  # (weight standardisation reshapes a weight so its fan-in is one of them)
            if d != 1:
                ctx.mark_norm(v, "F.batch_norm with batch statistics")
    return out


def group_norm_fn(ctx: RuleContext, node: fx.Node):
    """F.group_norm(x, num_groups, weight, bias), as the GroupNorm layer's rule: a group's channels
    are one unit (whole groups go: the kept groups' statistics are unchanged) and the
    ``num_groups`` literal follows the kept count; one group normalises over all channels (not
    exact). A computed ``num_groups`` freezes the channels."""
    x, shape = _operand(ctx, node.args[0])
    groups = ctx.arg(1, "num_groups")
    params = [p[0] for p in (_operand(ctx, ctx.arg(2, "weight")), _operand(ctx, ctx.arg(3, "bias"))) if p]
    channels = x.get(1)
    if channels is None or not isinstance(groups, int) or groups < 1 or len(channels) % groups:
        ctx.freeze_all([x] + params, "group_norm with a computed num_groups or untracked channels")
        return {}
    for p in params:
        if 0 in p:
            ctx.unify(channels, p[0])
    for d, v in x.items():
        if d >= 2:  # averaged over within each group
            ctx.mark_norm(v, "F.group_norm")
    if groups == 1:
        ctx.mark_norm(channels, "F.group_norm with one group")
        return dict(x)
    per_group = whole_groups(ctx, channels, groups)
    ctx.add_patch(("args", 1) if len(node.args) > 1 else ("kwargs", "num_groups"), per_group)
    return dict(x)


register_function(F.layer_norm)(layer_norm_fn)
register_function(F.group_norm)(group_norm_fn)
register_function(F.linear)(linear_fn)
register_function(F.conv1d, F.conv2d, F.conv3d)(conv_fn)
register_function(F.batch_norm)(batch_norm_fn)
