"""Windowed attention in torchvision's Swin: ``shifted_window_attention`` and the per-head
relative-position bias it adds (``_get_relative_position_bias``).

The function reshapes its q/k/v projection into ``(3, num_heads, C // num_heads)`` with
``C`` its *input* width, so the attention width is tied to the stream's width: position
``p`` of q, k, v and of the output projection's input is removed with stream channel ``p``.
In "dims" mode every head loses the same positions; in "heads" mode a head goes with its
``C // num_heads`` stream channels, its relative-position bias column and its logit scale,
and the ``num_heads`` literal (and the module's attribute) follows.
"""
from __future__ import annotations

import numpy as np
import torch.fx as fx

from surgery.rules.context import RuleContext
from surgery.rules.registry import register_function_rule

__all__ = ["shifted_window_attention", "relative_position_bias", "patch_merging_pad"]

_MODULE = "torchvision.models.swin_transformer."


@register_function_rule(_MODULE + "_patch_merging_pad")
def patch_merging_pad(ctx: RuleContext, node: fx.Node):
    """Pads H and W, then concatenates the four 2x2 neighbours on the channel dim: the
    output's channels are the input's, four times."""
    x = node.args[0]
    axes = ctx.axes(x) or {}
    last = len(ctx.shape(x)) - 1
    for d, v in axes.items():
        if d != last:
            ctx.freeze(v, "patch merging pads and subsamples this dim")
    return {last: np.concatenate([axes[last]] * 4)} if last in axes else {}


@register_function_rule(_MODULE + "_get_relative_position_bias")
def relative_position_bias(ctx: RuleContext, node: fx.Node):
    """``table[index].view(N, N, -1).permute(2, 0, 1).unsqueeze(0)``: the table's head
    column becomes dim 1 of the bias; its rows are positions, never channels."""
    table = ctx.arg(0, "relative_position_bias_table")
    axes = ctx.axes(table) or {}
    if 0 in axes:
        ctx.freeze(axes[0], "relative-position rows are positions, not channels")
    return {1: axes[1]} if 1 in axes else {}


@register_function_rule(_MODULE + "shifted_window_attention")
def shifted_window_attention(ctx: RuleContext, node: fx.Node):
    names = ("input", "qkv_weight", "proj_weight", "relative_position_bias", "window_size", "num_heads")
    x, qkv_w, proj_w, bias, _, heads = (ctx.arg(i, n) for i, n in enumerate(names))
    qkv_b, proj_b, logit = (ctx.arg(i, n) for i, n in ((9, "qkv_bias"), (10, "proj_bias"), (11, "logit_scale")))
    stream = (ctx.axes(x) or {}).get(len(ctx.shape(x)) - 1)
    width = ctx.shape(x)[-1]
    if stream is None:
        stream = ctx.fresh(width)
        ctx.freeze(stream, "windowed attention over untracked inputs")
    wq, wp = ctx.axes(qkv_w) or {}, ctx.axes(proj_w) or {}
    rows, out = _param(ctx, wq, 0, 3 * width), _param(ctx, wp, 0, width)
    _tie(ctx, [_param(ctx, wq, 1, width), _param(ctx, wp, 1, width)] + list(rows.reshape(3, width)), stream)
    for b, v in ((qkv_b, rows), (proj_b, out)):
        if (ctx.axes(b) or {}).get(0) is not None:
            ctx.unify(ctx.axes(b)[0], v)
    per_head = [(ctx.axes(bias) or {}).get(1), (ctx.axes(logit) or {}).get(0)]
    _heads(ctx, stream.reshape(heads, -1), [v for v in per_head if v is not None])
    shape = ctx.out_shape()
    return {len(shape) - 1: out}


def _param(ctx: RuleContext, axes: dict, dim: int, n: int) -> np.ndarray:
    return axes[dim] if dim in axes else ctx.fresh(n)


def _tie(ctx: RuleContext, arrays: list, stream: np.ndarray) -> None:
    for a in arrays:
        ctx.unify(a, stream)


def _heads(ctx: RuleContext, grid: np.ndarray, per_head: list) -> None:
    if ctx.attention == "heads":
        for row in grid:
            ctx.unify(np.full(len(row) - 1, row[0]), row[1:])
        ctx.add_heads(grid[:, 0])
        for v in per_head:
            ctx.unify(v, grid[:, 0])
        ctx.add_patch(("args", 5), grid[:, 0])
        ctx.note(grid[:, 0], f"torchvision's shifted_window_attention derives the head width from its input "
                             "width, so a head goes only with its channels of the stream")
        return
    for row in grid[1:]:
        ctx.unify(grid[0], row)
    for v in per_head:
        ctx.freeze(v, "heads are kept in attention='dims' mode")
