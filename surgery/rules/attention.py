"""nn.MultiheadAttention: its embed_dim is both the width of its inputs/outputs and of
the packed q/k/v projections, so removing an embedding channel removes the same position
of q, k, v and out_proj. Removal is balanced across heads (each head loses the same
positions), so ``embed_dim`` stays divisible by ``num_heads``."""
from __future__ import annotations

import math

import torch
import torch.fx as fx
import torch.nn as nn

from surgery.handlers import Handler, LinearHandler, _clone, _index, register_handler, replace_param
from surgery.rules.context import RuleContext
from surgery.rules.registry import register_module_rule

__all__ = ["multihead_attention", "MultiheadAttentionHandler"]


@register_module_rule(nn.MultiheadAttention)
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
    for row in heads[1:]:
        ctx.unify(heads[0], row)
    ctx.add_slot(name, "out", "per_channel", stream)
    q_axes, q_shape = axes[0], shapes[0]
    out = {d: v for d, v in q_axes.items() if d != len(q_shape) - 1}
    out[len(q_shape) - 1] = stream
    return [out, weights_axes]


@register_handler(nn.MultiheadAttention)
class MultiheadAttentionHandler(Handler):
    def prune(self, module, keep_in, keep_out):
        keep = keep_out if keep_out is not None else keep_in
        new = _clone(module)
        if keep is None:
            return new
        E, H = module.embed_dim, module.num_heads
        k = _index(keep, module.in_proj_weight.device)
        if k.numel() % H:
            raise ValueError(f"MultiheadAttention: keep a multiple of num_heads={H} channels, got {k.numel()}")
        rows = torch.cat([k, k + E, k + 2 * E])
        # attention divides q.k by sqrt(head_dim): scale q so the smaller head_dim changes nothing
        q_scale = torch.ones(len(rows), 1, dtype=module.in_proj_weight.dtype, device=k.device)
        q_scale[: k.numel()] = math.sqrt((k.numel() // H) / (E // H))
        replace_param(new, "in_proj_weight", module.in_proj_weight[rows][:, k] * q_scale)
        if module.in_proj_bias is not None:
            replace_param(new, "in_proj_bias", module.in_proj_bias[rows] * q_scale[:, 0])
        for name in ("bias_k", "bias_v"):
            if getattr(module, name, None) is not None:
                replace_param(new, name, getattr(module, name)[..., k])
        new._modules["out_proj"] = LinearHandler().prune(module.out_proj, k, k)
        new.embed_dim = new.kdim = new.vdim = k.numel()
        new.head_dim = k.numel() // H
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
