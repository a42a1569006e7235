"""nn.Linear: reads the last dim, creates a new one.

Example:
    >>> import torch.nn as nn
    >>> LinearHandler().prune(nn.Linear(4, 6), keep_in=[0, 1], keep_out=None).in_features
    2
"""
from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn as nn

from surgery.ops.context import RuleContext, first_input
from surgery.ops.handler import (Handler, _check, _clone, _index, _masks, _select, _zero_outputs, replace_param)
from surgery.ops.registry import register_layer


def linear(ctx: RuleContext, node: fx.Node):
    """Reads the last dim, creates a new one; other dims pass through."""
    m, name = ctx.module(), node.target
    axes, shape = first_input(ctx, node)
    last = len(shape) - 1
    if last in axes:
        ctx.add_slot(name, "in", "consumer", axes[last])
    out = {d: v for d, v in axes.items() if d != last}
    out[last] = ctx.add_slot(name, "out", "producer", ctx.fresh(m.out_features))
    return out


class LinearHandler(Handler):
    replaces = ("weight", "bias")

    def prune(self, module, keep_in, keep_out):
        new = _clone(module)
        if module.bias is not None:
            replace_param(new, "bias", module.bias)  # never shared with the original
        if keep_out is not None:
            k = _index(keep_out, module.weight.device)
            _check(k, module.out_features, module, "output")
            _select(new, "weight", 0, k)
            _select(new, "bias", 0, k)
            new.out_features = k.numel()
        if keep_in is not None:
            k = _index(keep_in, module.weight.device)
            _check(k, module.in_features, module, "input")
            _select(new, "weight", 1, k)
            new.in_features = k.numel()
        return new

    def slices(self, module, role):
        return module.weight if role == "out" else module.weight.t()

    def tensor_dims(self, module, role):
        if role == "in":
            return [("weight", 1)]
        return [("weight", 0)] + ([("bias", 0)] if module.bias is not None else [])

    def channel_dims(self, module):
        return (-1, -1) if type(module) is nn.Linear else None  # a subclass may have its own forward

    def mask(self, module, keep_in, keep_out):
        with torch.no_grad():
            if keep_in is not None:
                module.weight[:, ~_masks(module.in_features, keep_in).to(module.weight.device)] = 0
            if keep_out is not None:
                _zero_outputs(module, 0, keep_out)
        return module


register_layer(nn.Linear, rule=linear, handler=LinearHandler())
