"""Windowed attention in torchvision's Swin: ``shifted_window_attention`` and the per-head
relative-position bias it adds (``_get_relative_position_bias``).

The function reshapes its q/k/v projection into ``(3, num_heads, C // num_heads)`` with
``C`` its *input* width, so in "dims" mode the attention width is tied to the stream's:
position ``p`` of q, k, v and of the output projection's input goes with stream channel
``p``, and every head loses the same positions. In "heads" mode the attention width is its
own: a head goes with its q/k/v rows, output-projection columns, relative-position bias
column and logit scale, whatever the stream does; the ``num_heads`` literal (and the
module's attribute) follows, and once a head is gone the call becomes
:func:`surgery.ops.windowed.window_attention`, which reads the attention width from the
q/k/v weight (same result when the widths agree).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F

from surgery.ops.context import RuleContext
from surgery.ops.registry import register_function, register_leaf_function

__all__ = ["shifted_window_attention", "relative_position_bias", "patch_merging_pad"]

_MODULE = "torchvision.models.swin_transformer."


def window_attention(input: torch.Tensor, qkv_weight: torch.Tensor, proj_weight: torch.Tensor,
                     relative_position_bias: torch.Tensor, window_size: list, num_heads: int, shift_size: list,
                     attention_dropout: float = 0.0, dropout: float = 0.0, qkv_bias: torch.Tensor | None = None,
                     proj_bias: torch.Tensor | None = None, logit_scale: torch.Tensor | None = None,
                     training: bool = True) -> torch.Tensor:
    """Shifted-window multi-head attention over ``input[B, H, W, C]`` (the arguments of
    torchvision's ``shifted_window_attention``), attention width ``qkv_weight.shape[0] // 3``."""
    B, H, W, C = input.shape
    wh, ww = window_size
    x = F.pad(input, (0, 0, 0, (ww - W % ww) % ww, 0, (wh - H % wh) % wh))
    Hp, Wp = x.shape[1], x.shape[2]
    shift = (0 if wh >= Hp else shift_size[0], 0 if ww >= Wp else shift_size[1])
    if any(shift):
        x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    windows = _windows(x, wh, ww)  # [B * nW, wh * ww, C]
    width = qkv_weight.shape[0] // 3
    d = width // num_heads
    if logit_scale is not None and qkv_bias is not None:  # Swin V2 has no key bias
        qkv_bias = qkv_bias.clone()
        qkv_bias[width:2 * width] = 0
    n, tokens = windows.shape[0], windows.shape[1]
    q, k, v = F.linear(windows, qkv_weight, qkv_bias).reshape(n, tokens, 3, num_heads, d).permute(2, 0, 3, 1, 4)
    if logit_scale is not None:  # cosine attention
        attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        attn = attn * torch.clamp(logit_scale, max=math.log(100.0)).exp()
    else:
        attn = (q * d ** -0.5) @ k.transpose(-2, -1)
    attn = attn + relative_position_bias
    if any(shift):
        mask = _shift_mask(Hp, Wp, wh, ww, shift, x)  # [nW, tokens, tokens]
        attn = (attn.view(B, mask.shape[0], num_heads, tokens, tokens) + mask[None, :, None]).flatten(0, 1)
    attn = F.dropout(F.softmax(attn, dim=-1), p=attention_dropout, training=training)
    out = (attn @ v).transpose(1, 2).reshape(n, tokens, width)
    out = F.dropout(F.linear(out, proj_weight, proj_bias), p=dropout, training=training)
    out = out.view(B, Hp // wh, Wp // ww, wh, ww, -1).permute(0, 1, 3, 2, 4, 5).reshape(B, Hp, Wp, -1)
    if any(shift):
        out = torch.roll(out, shifts=shift, dims=(1, 2))
    return out[:, :H, :W, :].contiguous()


def _windows(x: torch.Tensor, wh: int, ww: int) -> torch.Tensor:
    B, Hp, Wp, C = x.shape
    x = x.view(B, Hp // wh, wh, Wp // ww, ww, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, wh * ww, C)


def _shift_mask(Hp: int, Wp: int, wh: int, ww: int, shift: tuple, like: torch.Tensor) -> torch.Tensor:
    """-100 between tokens of one window that came from different regions before the roll."""
    def regions(n: int, w: int, s: int) -> torch.Tensor:
        r = torch.zeros(n, device=like.device)
        if s:  # no roll along this axis: one region
            r[n - w:] = 1
            r[n - s:] = 2
        return r
    ids = regions(Hp, wh, shift[0])[:, None] * 3 + regions(Wp, ww, shift[1])[None, :]
    ids = _windows(ids[None, :, :, None], wh, ww).squeeze(-1)  # [nW, tokens]
    return (ids[:, None, :] != ids[:, :, None]).to(like.dtype) * -100.0


register_leaf_function(window_attention)  # a pruned Swin traced again keeps it as one call


@register_function(_MODULE + "_patch_merging_pad")
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


@register_function(_MODULE + "_get_relative_position_bias")
def relative_position_bias(ctx: RuleContext, node: fx.Node):
    """``table[index].view(N, N, -1).permute(2, 0, 1).unsqueeze(0)``: the table's head
    column becomes dim 1 of the bias; its rows are positions, never channels."""
    table = ctx.arg(0, "relative_position_bias_table")
    axes = ctx.axes(table) or {}
    if 0 in axes:
        ctx.freeze(axes[0], "relative-position rows are positions, not channels")
    return {1: axes[1]} if 1 in axes else {}


@register_function(_MODULE + "shifted_window_attention", window_attention)
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
    att_width = ctx.shape(qkv_w)[0] // 3
    rows, out = _param(ctx, wq, 0, 3 * att_width), _param(ctx, wp, 0, ctx.shape(proj_w)[0])
    ctx.unify(_param(ctx, wq, 1, width), stream)
    attention = stream if ctx.attention == "dims" else ctx.fresh(att_width)  # heads: a width of its own
    _tie(ctx, [_param(ctx, wp, 1, att_width)] + list(rows.reshape(3, att_width)), attention)
    for b, v in ((qkv_b, rows), (proj_b, out)):
        if (ctx.axes(b) or {}).get(0) is not None:
            ctx.unify(ctx.axes(b)[0], v)
    per_head = [(ctx.axes(bias) or {}).get(1), (ctx.axes(logit) or {}).get(0)]
    _heads(ctx, attention.reshape(heads, -1), [v for v in per_head if v is not None])
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
        ctx.add_swap(window_attention, grid[:, 0])
        return
    for row in grid[1:]:
        ctx.unify(grid[0], row)
    for v in per_head:
        ctx.freeze(v, "heads are kept in attention='dims' mode")
