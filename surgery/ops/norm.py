"""Per-channel layers: BatchNorm, InstanceNorm, GroupNorm (whole groups), LayerNorm, PReLU.

Example:
    >>> import torch.nn as nn
    >>> GroupNormHandler().prune(nn.GroupNorm(4, 8), None, [0, 1, 4, 5]).num_groups
    2
"""
from __future__ import annotations

import numpy as np
import torch.fx as fx
import torch.nn as nn

from surgery.core.errors import ArgumentError
from surgery.ops.context import RuleContext, first_input
from surgery.ops.handler import PerChannelHandler
from surgery.ops.registry import register_layer


def per_channel(ctx: RuleContext, node: fx.Node, dim: int = 1):
    """BatchNorm/InstanceNorm/PReLU/LayerNorm: per-channel parameters along ``dim``."""
    m, name = ctx.module(), node.target
    axes, shape = first_input(ctx, node)
    dim = dim % len(shape) if len(shape) > 1 or dim < 0 else 0
    has_state = any(True for _ in m.parameters(recurse=False)) or any(
        b is not None and b.dim() > 0 for b in m.buffers(recurse=False))
    if dim in axes and has_state:
        ctx.add_slot(name, "out", "per_channel", axes[dim])
    return dict(axes)


def prelu(ctx: RuleContext, node: fx.Node):
    if ctx.module().num_parameters == 1:
        return dict(ctx.axes(node.args[0]) or {})
    return per_channel(ctx, node, 1)


def layer_norm(ctx: RuleContext, node: fx.Node):
    """Normalises over the trailing dims; with one trailing dim it is per-channel."""
    m = ctx.module()
    axes, shape = first_input(ctx, node)
    k = len(m.normalized_shape)
    if k == 1:
        if len(shape) - 1 in axes:
            ctx.mark_norm(axes[len(shape) - 1], f"{type(m).__name__} '{node.target}'")
        return per_channel(ctx, node, -1)
    for d in range(len(shape) - k, len(shape)):
        if d in axes:
            ctx.freeze(axes[d], "LayerNorm over several dims")
    return {d: v for d, v in axes.items() if d < len(shape) - k}


def group_norm(ctx: RuleContext, node: fx.Node):
    """Whole groups are removed (statistics of kept groups are unchanged: exact);
    with a single group every channel is its own unit (valid, not exact)."""
    m = ctx.module()
    axes, _ = first_input(ctx, node)
    v = axes.get(1)
    if v is not None and m.num_groups > 1:
        whole_groups(ctx, v, m.num_groups)
    elif v is not None:
        ctx.mark_norm(v, f"GroupNorm(1 group) '{node.target}'")
    return per_channel(ctx, node, 1)


def whole_groups(ctx: RuleContext, channels: np.ndarray, groups: int) -> np.ndarray:
    """Make each of ``groups`` consecutive blocks of ``channels`` one unit (a group norm's
    statistics stay exact only when whole groups go); returns one variable per group."""
    rows = channels.reshape(groups, -1)
    for row in rows:
        ctx.unify(np.full(len(row), row[0]), row)
    return rows[:, 0]


class GroupNormHandler(PerChannelHandler):
    size_attr, tensors = "num_channels", ("weight", "bias")

    def _resize(self, new, old, n):
        if old.num_groups > 1:
            per = old.num_channels // old.num_groups
            if n % per:
                raise ArgumentError("GroupNorm: remove whole groups of channels "
                                 f"({per} channels per group)")
            new.num_groups = n // per
        new.num_channels = n


class LayerNormHandler(PerChannelHandler):
    size_attr, tensors = "normalized_shape", ("weight", "bias")

    def prune(self, module, keep_in, keep_out):
        if len(module.normalized_shape) != 1:
            raise ArgumentError("LayerNorm over several dims cannot be pruned")
        return super().prune(module, keep_in, keep_out)

    def _resize(self, new, old, n):
        new.normalized_shape = (n,)


class PReLUHandler(PerChannelHandler):
    size_attr, tensors = "num_parameters", ("weight",)


register_layer(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.InstanceNorm1d, nn.InstanceNorm2d,
               nn.InstanceNorm3d, rule=per_channel, handler=PerChannelHandler())
register_layer(nn.GroupNorm, rule=group_norm, handler=GroupNormHandler())
register_layer(nn.LayerNorm, rule=layer_norm, handler=LayerNormHandler())
register_layer(nn.PReLU, rule=prelu, handler=PReLUHandler())
