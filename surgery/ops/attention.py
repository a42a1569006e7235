"""Attention: ``F.scaled_dot_product_attention``, ``nn.MultiheadAttention``, and which
reshapes split channels into heads.

Two ways to prune attention (``attention=`` on ``surgery.trace``/``prune``):

- ``"dims"``: every head loses the same positions of its head dim (a reshape into
  ``(heads, head_dim)`` unifies the positions across heads), so the head count stays.
- ``"heads"``: whole heads go. The reshapes that feed an attention product
  (:func:`head_splits`) make each head one unit: its q/k/v rows, and the columns of the
  output projection that read it. Grouped-query attention needs no special case: the
  ``expand``/``reshape`` that repeats a key/value head for its query heads ties each
  key/value head to every query head that reads it.

nn.MultiheadAttention's embed_dim is both the width of its inputs/outputs and of the
packed q/k/v projections, so removing an embedding channel removes the same position of
q, k, v and out_proj: balanced across heads in "dims" mode, whole heads in "heads" mode."""
from __future__ import annotations

import math
import operator

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn

from surgery.core.errors import ArgumentError
from surgery.ops.linear import LinearHandler
from surgery.ops.handler import Handler, _clone, _index, replace_param
from surgery.ops.context import RuleContext
from surgery.ops.elementwise import broadcast_axes
from surgery.ops.registry import register_function, register_layer

__all__ = ["multihead_attention", "MultiheadAttentionHandler", "scaled_dot_product_attention", "head_splits",
           "ATTENTION_PRODUCTS"]

_SDPA = [torch.nn.functional.scaled_dot_product_attention]
_SDPA += [getattr(torch.ops.aten, n).default for n in ("scaled_dot_product_attention",)
          if hasattr(torch.ops.aten, n)]
_MATMULS = (torch.matmul, operator.matmul, torch.bmm, "matmul", "bmm", torch.einsum,
            torch.ops.aten.matmul.default, torch.ops.aten.bmm.default)
ATTENTION_PRODUCTS = tuple(_SDPA) + _MATMULS
_RESHAPES = ("view", "reshape", "unflatten", torch.reshape, torch.ops.aten.view.default,
             torch.ops.aten.reshape.default, torch.ops.aten._unsafe_view.default)
REPEATS = ("expand", torch.ops.aten.expand.default)  # copies of key/value heads for their query heads
_STOPS = ("linear", "conv", "addmm", "mm", "baddbmm", "embedding")


def head_splits(gm: fx.GraphModule) -> set:
    """Names of the reshape nodes upstream of an attention product (SDPA, or a matmul of
    two tensors of rank >= 3) with no layer in between: where channels become heads."""
    found: set = set()
    for node in gm.graph.nodes:
        if node.op in ("call_function", "call_method") and node.target in ATTENTION_PRODUCTS and _batched(node):
            for arg in node.all_input_nodes:
                _walk_back(arg, found, set())
    return found


def _batched(node: fx.Node) -> bool:
    if node.target in _SDPA:
        return True
    shapes = [a.meta.get("surgery.value") for a in node.all_input_nodes]
    return sum(1 for v in shapes if getattr(v, "shape", None) is not None and len(v.shape) >= 3) >= 2


def _walk_back(node: fx.Node, found: set, seen: set) -> None:
    stack = [node]
    while stack:
        n = stack.pop()
        if n in seen or n.op in ("placeholder", "get_attr", "call_module", "output"):
            continue
        seen.add(n)
        name = getattr(n.target, "__name__", str(n.target))
        if n.target in ATTENTION_PRODUCTS or any(s in name for s in _STOPS):
            continue
        if n.target in _RESHAPES or n.target in REPEATS:
            found.add(n.name)
        stack.extend(n.all_input_nodes)


def scaled_dot_product_attention(ctx: RuleContext, node: fx.Node):
    """``F.scaled_dot_product_attention(q, k, v, ...)``: q's and k's head dims are contracted
    (unified); v's head dim is the output's; the batch dims (heads) broadcast; with
    ``enable_gqa`` each key/value head is repeated for the query heads that read it."""
    q, k, v = (ctx.arg(i, n) for i, n in enumerate(("query", "key", "value")))
    (xq, sq), (xk, sk), (xv, sv) = [(dict(ctx.axes(t) or {}), ctx.shape(t)) for t in (q, k, v)]
    ctx.freeze_all([ctx.axes(ctx.arg(3, "attn_mask"))], "an attention mask with tracked channels")
    for axes, shape in ((xq, sq), (xk, sk), (xv, sv)):
        if len(shape) - 2 in axes:
            ctx.freeze(axes.pop(len(shape) - 2), "attention over a tracked sequence dim")
    _contract_head_dims(ctx, xq.pop(len(sq) - 1, None), xk.pop(len(sk) - 1, None), ctx.arg(6, "scale"))
    out_v = xv.pop(len(sv) - 1, None)
    batch = [(xq, sq[:-2]), (xk, sk[:-2]), (xv, sv[:-2])]
    if ctx.arg(7, "enable_gqa", False) and len(sq) >= 3 and sk[-3] != sq[-3]:
        batch[1:] = [_repeat_heads(a, s, sq[-3]) for a, s in batch[1:]]
    out_shape = ctx.out_shape()
    out = broadcast_axes(ctx, batch, out_shape[:-2])
    if out_v is not None:
        out[len(out_shape) - 1] = out_v
    return out


def _contract_head_dims(ctx: RuleContext, dq, dk, scale) -> None:
    if dq is None and dk is None:
        return
    if dq is None or dk is None:
        ctx.freeze(dq if dq is not None else dk, "contracted with an untracked tensor")
        return
    ctx.unify(dq, dk)
    if scale is None:
        ctx.freeze(dq, "F.scaled_dot_product_attention scales by 1/sqrt(head_dim) read from the query, so "
                       "removing head dims would change it: prune whole heads (attention='heads') or pass scale=")


def _repeat_heads(axes: dict, shape, heads: int) -> tuple:
    d = len(shape) - 1
    if shape[d] == 1:  # one key/value head serves every query head (MQA): a broadcast
        return axes, tuple(shape)
    out = dict(axes)
    if d in out:
        out[d] = np.repeat(out[d], heads // shape[d])
    return out, tuple(shape[:-1]) + (heads,)


register_function(*_SDPA)(scaled_dot_product_attention)


def multihead_attention(ctx: RuleContext, node: fx.Node):
    m, name = ctx.module(), node.target
    inputs = [ctx.arg(i, key) for i, key in enumerate(("query", "key", "value"))]
    axes = [ctx.axes(a) or {} for a in inputs]
    shapes = [ctx.shape(a) for a in inputs]
    lasts = [a.get(len(s) - 1) for a, s in zip(axes, shapes)]
    value = ctx.value(node)
    weights_axes = {} if isinstance(value, list) and len(value) > 1 and value[1] is not None else None
    if not m._qkv_same_embed_dim:
        ctx.freeze_all(axes, "MultiheadAttention with separate kdim/vdim")
        return [{}, weights_axes]
    stream = next((v for v in lasts if v is not None), None)
    if stream is None:
        stream = ctx.fresh(m.embed_dim)
        ctx.freeze(stream, "attention over untracked inputs")
    for v in lasts:
        if v is None:
            ctx.freeze(stream, "query/key/value mixes tracked and untracked inputs")
        elif v is not stream:
            ctx.unify(stream, v)
    heads = stream.reshape(m.num_heads, -1)
    ctx.note(stream, "nn.MultiheadAttention's embed_dim is both its head width and its input and output "
                     "width, so its heads go only with the same channels of the stream")
    if ctx.attention == "heads":
        for row in heads:
            ctx.unify(np.full(len(row) - 1, row[0]), row[1:])
        ctx.add_heads(heads[:, 0])
    else:
        for row in heads[1:]:
            ctx.unify(heads[0], row)
    ctx.add_slot(name, "out", "per_channel", stream)
    q_axes, q_shape = axes[0], shapes[0]
    out = {d: v for d, v in q_axes.items() if d != len(q_shape) - 1}
    out[len(q_shape) - 1] = stream
    return [out, weights_axes]


def _whole_heads_kept(k: torch.Tensor, embed_dim: int, heads: int) -> int | None:
    """The number of heads kept when ``k`` keeps whole heads and drops some, else None."""
    per_head = torch.bincount(k.cpu() // (embed_dim // heads), minlength=heads)
    full = per_head == embed_dim // heads
    if bool(((per_head == 0) | full).all()) and not bool(full.all()):
        return int(full.sum())
    return None


class MultiheadAttentionHandler(Handler):
    def prune(self, module, keep_in, keep_out):
        keep = keep_out if keep_out is not None else keep_in
        new = _clone(module)
        if keep is None:
            return new
        E, H = module.embed_dim, module.num_heads
        k = _index(keep, module.in_proj_weight.device)
        whole = _whole_heads_kept(k, E, H)
        if whole is None and k.numel() % H:
            raise ArgumentError(f"MultiheadAttention: keep whole heads or a multiple of num_heads={H} channels, "
                             f"got {k.numel()}")
        rows = torch.cat([k, k + E, k + 2 * E])
        # attention divides q.k by sqrt(head_dim): scale q so a smaller head_dim changes nothing
        q_scale = torch.ones(len(rows), 1, dtype=module.in_proj_weight.dtype, device=k.device)
        if whole is None:
            q_scale[: k.numel()] = math.sqrt((k.numel() // H) / (E // H))
        replace_param(new, "in_proj_weight", module.in_proj_weight[rows][:, k] * q_scale)
        if module.in_proj_bias is not None:
            replace_param(new, "in_proj_bias", module.in_proj_bias[rows] * q_scale[:, 0])
        for name in ("bias_k", "bias_v"):
            if getattr(module, name, None) is not None:
                replace_param(new, name, getattr(module, name)[..., k])
        new._modules["out_proj"] = LinearHandler().prune(module.out_proj, k, k)
        new.embed_dim = new.kdim = new.vdim = k.numel()
        new.num_heads = H if whole is None else whole
        new.head_dim = k.numel() // new.num_heads
        return new

    def mask(self, module, keep_in, keep_out):
        """Removed embedding channels are read by nobody: zero their in_proj columns, their
        q/k/v rows and out_proj columns (the attention scale stays the original's)."""
        keep = keep_out if keep_out is not None else keep_in
        if keep is None:
            return module
        E = module.embed_dim
        gone = torch.ones(E, dtype=torch.bool)
        gone[_index(keep, "cpu")] = False
        gone = gone.to(module.in_proj_weight.device)
        with torch.no_grad():
            module.in_proj_weight[:, gone] = 0
            module.in_proj_weight[gone.repeat(3)] = 0
            if module.in_proj_bias is not None:
                module.in_proj_bias[gone.repeat(3)] = 0
            module.out_proj.weight[:, gone] = 0
        return module

    def slices(self, module, role):
        E = module.embed_dim
        w = module.in_proj_weight  # [3E, E]: column c reads channel c; rows c, E+c, 2E+c make it
        return torch.cat([w.t(), w.reshape(3, E, E).permute(1, 0, 2).reshape(E, -1),
                          module.out_proj.weight, module.out_proj.weight.t()], 1)


register_layer(nn.MultiheadAttention, rule=multihead_attention, handler=MultiheadAttentionHandler())
