"""Rules for parametric layers: where they create, read or carry channels."""
from __future__ import annotations

import numpy as np
import torch.fx as fx
import torch.nn as nn

from surgery.rules.context import RuleContext
from surgery.rules.registry import register_module_rule
from surgery.rules.shape_ops import reshape_axes

__all__ = ["conv", "linear", "per_channel", "group_norm", "embedding", "channel_shuffle"]

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def _input(ctx: RuleContext, node: fx.Node):
    x = node.args[0] if node.args else next(iter(node.kwargs.values()))
    return ctx.axes(x) or {}, ctx.shape(x)


def _freeze_other_dims(ctx: RuleContext, axes: dict, keep: int) -> None:
    for d, v in axes.items():
        if d != keep:
            ctx.freeze(v, "a layer mixes or resizes this dim")


@register_module_rule(*_CONVS)
def conv(ctx: RuleContext, node: fx.Node):
    """groups=1: consumer + producer. Depthwise: output channels follow their input
    channel. Other grouped convs: removal balanced across groups (unified positions)."""
    m, name = ctx.module(), node.target
    axes, shape = _input(ctx, node)
    cdim = 1 if len(shape) == m.weight.dim() else 0  # unbatched input
    _freeze_other_dims(ctx, axes, cdim)
    g, cin, cout = m.groups, m.in_channels, m.out_channels
    in_vars = axes.get(cdim)
    if g > 1 and cin == g:  # depthwise, channel multiplier cout // g
        if in_vars is None:
            in_vars = ctx.fresh(cin)
            ctx.freeze(in_vars, "depthwise conv reads a tensor whose channels are not tracked")
        out = ctx.add_slot(name, "out", "producer", np.repeat(in_vars, cout // g))
        return {cdim: out}
    if in_vars is not None:
        blocks = in_vars.reshape(g, cin // g)
        for row in blocks[1:]:
            ctx.unify(blocks[0], row)
        ctx.add_slot(name, "in", "consumer", in_vars)
    out = ctx.add_slot(name, "out", "producer", np.tile(ctx.fresh(cout // g), g))
    return {cdim: out}


@register_module_rule(nn.Linear)
def linear(ctx: RuleContext, node: fx.Node):
    """Reads the last dim, creates a new one; other dims pass through."""
    m, name = ctx.module(), node.target
    axes, shape = _input(ctx, node)
    last = len(shape) - 1
    if last in axes:
        ctx.add_slot(name, "in", "consumer", axes[last])
    out = {d: v for d, v in axes.items() if d != last}
    out[last] = ctx.add_slot(name, "out", "producer", ctx.fresh(m.out_features))
    return out


def per_channel(ctx: RuleContext, node: fx.Node, dim: int = 1):
    """BatchNorm/InstanceNorm/PReLU/LayerNorm: per-channel parameters along ``dim``."""
    m, name = ctx.module(), node.target
    axes, shape = _input(ctx, node)
    dim = dim % len(shape) if len(shape) > 1 or dim < 0 else 0
    has_state = any(True for _ in m.parameters(recurse=False)) or any(
        b is not None and b.dim() > 0 for b in m.buffers(recurse=False))
    if dim in axes and has_state:
        ctx.add_slot(name, "out", "per_channel", axes[dim])
    return dict(axes)


register_module_rule(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
                     nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)(per_channel)


@register_module_rule(nn.PReLU)
def prelu(ctx: RuleContext, node: fx.Node):
    if ctx.module().num_parameters == 1:
        return dict(ctx.axes(node.args[0]) or {})
    return per_channel(ctx, node, 1)


@register_module_rule(nn.LayerNorm)
def layer_norm(ctx: RuleContext, node: fx.Node):
    """Normalises over the trailing dims; with one trailing dim it is per-channel."""
    m = ctx.module()
    axes, shape = _input(ctx, node)
    k = len(m.normalized_shape)
    if k == 1:
        if len(shape) - 1 in axes:
            ctx.mark_norm(axes[len(shape) - 1], f"{type(m).__name__} '{node.target}'")
        return per_channel(ctx, node, -1)
    for d in range(len(shape) - k, len(shape)):
        if d in axes:
            ctx.freeze(axes[d], "LayerNorm over several dims")
    return {d: v for d, v in axes.items() if d < len(shape) - k}


@register_module_rule(nn.GroupNorm)
def group_norm(ctx: RuleContext, node: fx.Node):
    """Whole groups are removed (statistics of kept groups are unchanged: exact);
    with a single group every channel is its own unit (valid, not exact)."""
    m = ctx.module()
    axes, _ = _input(ctx, node)
    v = axes.get(1)
    if v is not None and m.num_groups > 1:
        for row in v.reshape(m.num_groups, -1):
            ctx.unify(np.full(len(row), row[0]), row)
    elif v is not None:
        ctx.mark_norm(v, f"GroupNorm(1 group) '{node.target}'")
    return per_channel(ctx, node, 1)


@register_module_rule(nn.Embedding)
def embedding(ctx: RuleContext, node: fx.Node):
    m, name = ctx.module(), node.target
    axes, shape = _input(ctx, node)
    out = dict(axes)
    out[len(shape)] = ctx.add_slot(name, "out", "producer", ctx.fresh(m.embedding_dim))
    return out


@register_module_rule(nn.Flatten, nn.Unflatten)
def flatten_module(ctx: RuleContext, node: fx.Node):
    axes, shape = _input(ctx, node)
    return reshape_axes(ctx, shape, axes, ctx.out_shape())


@register_module_rule(nn.ChannelShuffle)
def channel_shuffle(ctx: RuleContext, node: fx.Node):
    """Each of the g groups loses the same positions, read back transposed."""
    g = ctx.module().groups
    axes, _ = _input(ctx, node)
    out = dict(axes)
    if 1 in axes:
        blocks = axes[1].reshape(g, -1)
        for row in blocks[1:]:
            ctx.unify(blocks[0], row)
        out[1] = blocks.T.reshape(-1).copy()
    return out
