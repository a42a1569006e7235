"""Reductions, normalisations along a dim, and matrix products."""
from __future__ import annotations

import operator

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from surgery.ops.context import RuleContext
from surgery.ops.elementwise import broadcast_axes, elementwise
from surgery.ops.registry import register_function, register_layer, register_method

__all__ = ["reduce", "along_dim", "matmul"]


def _dims(dim, nd: int) -> list | None:
    if dim is None:
        return None
    dims = dim if isinstance(dim, (tuple, list)) else [dim]
    return [d % nd for d in dims]


def reduce(ctx: RuleContext, node: fx.Node):
    """mean/sum/amax/...: a reduced channel dim is frozen (its value depends on all channels)."""
    x = node.args[0]
    if node.target in (torch.max, torch.min, "max", "min") and ctx.shape(ctx.arg(1, "other")) is not None:
        return elementwise(ctx, node)
    axes, shape = ctx.axes(x) or {}, ctx.shape(x)
    dims = _dims(ctx.arg(1, "dim"), len(shape))
    keep = bool(ctx.arg(2, "keepdim", False))
    if dims is None:
        ctx.freeze_all(axes, "reduced over all dims")
        return _like_output(ctx, {})
    out = {}
    for d, v in axes.items():
        if d in dims and keep and len(dims) == 1 and _is_statistic(node.target):
            ctx.mark_norm(v, f"a {getattr(node.target, '__name__', node.target)} over channels kept for "
                             f"broadcasting (a normalisation, as in RMSNorm)")
        elif d in dims:
            ctx.freeze(v, "reduced over a channel dim")
        else:
            out[d if keep else d - sum(1 for r in dims if r < d)] = v
    return _like_output(ctx, out)


def _is_statistic(target) -> bool:
    name = target if isinstance(target, str) else getattr(target, "__name__", str(target))
    return name.split(".")[0] in ("mean", "var", "std", "norm")


def _like_output(ctx: RuleContext, axes: dict):
    value = ctx.value(ctx.node)
    if isinstance(value, list):  # (values, indices)
        return [dict(axes) for _ in value]
    return axes if ctx.shape(ctx.node) is not None else None


register_function(torch.mean, torch.sum, torch.amax, torch.amin, torch.std, torch.var,
                       torch.prod, torch.logsumexp, torch.max, torch.min, torch.norm,
                       torch.nansum, torch.nanmean, torch.all, torch.any)(reduce)
register_method("mean", "sum", "amax", "amin", "std", "var", "prod", "logsumexp",
                     "max", "min", "norm", "nansum", "nanmean", "all", "any")(reduce)


def along_dim(ctx: RuleContext, node: fx.Node):
    """softmax/normalize/cumsum along a dim: that dim's channels are frozen."""
    x = node.args[0]
    axes, shape = ctx.axes(x) or {}, ctx.shape(x)
    default = 1 if node.target is F.normalize else None
    dim = ctx.arg(1 if node.target is not F.normalize else 2, "dim", default)
    if dim is None or not isinstance(dim, int):
        ctx.freeze_all(axes, "op along an unknown dim")
        return {}
    dim %= len(shape)
    if dim in axes:
        ctx.freeze(axes[dim], "op mixes values along a channel dim")
    return {d: v for d, v in axes.items() if d != dim}


register_function(F.softmax, F.log_softmax, torch.softmax, torch.log_softmax,
                       F.normalize, torch.cumsum)(along_dim)
register_method("softmax", "log_softmax", "cumsum")(along_dim)


def softmax_module(ctx: RuleContext, node: fx.Node):
    m = ctx.module()
    x = node.args[0]
    axes, shape = ctx.axes(x) or {}, ctx.shape(x)
    if m.dim is None:
        ctx.freeze_all(axes, "softmax over an implicit dim")
        return {}
    dim = m.dim % len(shape)
    if dim in axes:
        ctx.freeze(axes[dim], "softmax over a channel dim")
    return {d: v for d, v in axes.items() if d != dim}


register_layer(nn.Softmax, nn.LogSoftmax, nn.Softmin, rule=softmax_module)


def matmul(ctx: RuleContext, node: fx.Node):
    """``a @ b``: the contracted dims are unified; batch dims broadcast."""
    a, b = node.args[0], node.args[1]
    sa, sb = ctx.shape(a), ctx.shape(b)
    xa, xb = ctx.axes(a) or {}, ctx.axes(b) or {}
    if sa is None or sb is None or len(sa) < 2 or len(sb) < 2:
        ctx.freeze_all([xa, xb], "matrix product of vectors")
        return {} if ctx.out_shape() is not None else None
    ka, kb = xa.get(len(sa) - 1), xb.get(len(sb) - 2)
    if ka is not None and kb is not None:
        ctx.unify(ka, kb)
    elif ka is not None or kb is not None:
        ctx.freeze(ka if ka is not None else kb, "contracted with an untracked tensor")
    out_shape = ctx.out_shape()
    nd = len(out_shape)
    batch_a = ({d: v for d, v in xa.items() if d < len(sa) - 2}, sa[:-2])
    batch_b = ({d: v for d, v in xb.items() if d < len(sb) - 2}, sb[:-2])
    out = broadcast_axes(ctx, [batch_a, batch_b], out_shape[:-2])
    if len(sa) - 2 in xa:
        out[nd - 2] = xa[len(sa) - 2]
    if len(sb) - 1 in xb:
        out[nd - 1] = xb[len(sb) - 1]
    return out


register_function(torch.matmul, operator.matmul, torch.bmm)(matmul)
register_method("matmul", "bmm")(matmul)


def einsum(ctx: RuleContext, node: fx.Node):
    """``torch.einsum(eq, *operands)``: dims sharing a letter are unified (contracted or
    not); the output's dims carry their letter's channels."""
    eq, *ops = node.args
    if len(ops) == 1 and isinstance(ops[0], (list, tuple)):
        ops = list(ops[0])
    eq = eq.replace(" ", "")
    operands = [(ctx.axes(o) or {}, ctx.shape(o)) for o in ops]
    if "..." in eq or "->" not in eq or any(s is None for _, s in operands):
        ctx.freeze_all([a for a, _ in operands], "einsum with ellipsis or implicit output")
        return {}
    ins, out_letters = eq.split("->")
    letters: dict = {}
    for (axes, shape), spec in zip(operands, ins.split(",")):
        for d, ch in enumerate(spec):
            letters.setdefault(ch, []).append((axes.get(d), shape[d]))
    chosen = {}
    for ch, occ in letters.items():
        tracked = [v for v, _ in occ if v is not None]
        if not tracked:
            continue
        for v in tracked[1:]:
            ctx.unify(tracked[0], v)
        if any(v is None and n > 1 for v, n in occ):
            ctx.freeze(tracked[0], "einsum with an untracked operand")
        chosen[ch] = tracked[0]
    return {d: chosen[ch] for d, ch in enumerate(out_letters) if ch in chosen}


register_function(torch.einsum)(einsum)
