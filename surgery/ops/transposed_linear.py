"""Linear layers stored as ``weight[in, out]`` (Hugging Face transformers' ``Conv1D``, used
by GPT-2 and its kin): the channel rule and the rewrite handler, registered by qualified
name so that transformers is imported only by models that use it.

Example:
    >>> from surgery.ops.transposed_linear import TransposedLinearHandler
    >>> TransposedLinearHandler.weight_dims
    {'in': 0, 'out': 1}
"""
from __future__ import annotations

import torch
import torch.fx as fx

from surgery.ops.handler import (Handler, _check, _clone, _index, _masks, _select, _zero_outputs,
                              replace_param)
from surgery.ops.context import RuleContext
from surgery.ops.registry import register_layer

__all__ = ["transposed_linear", "TransposedLinearHandler", "TYPES"]

TYPES = ("transformers.pytorch_utils.Conv1D",)


def transposed_linear(ctx: RuleContext, node: fx.Node):
    """Reads the last dim (``weight`` rows), creates a new one (``weight`` columns)."""
    m, name = ctx.module(), node.target
    x = node.args[0]
    axes, shape = ctx.axes(x) or {}, ctx.shape(x)
    last = len(shape) - 1
    if last in axes:
        ctx.add_slot(name, "in", "consumer", axes[last])
    out = {d: v for d, v in axes.items() if d != last}
    out[last] = ctx.add_slot(name, "out", "producer", ctx.fresh(m.weight.shape[1]))
    return out


class TransposedLinearHandler(Handler):
    replaces = ("weight", "bias")
    weight_dims = {"in": 0, "out": 1}

    def prune(self, module, keep_in, keep_out):
        new = _clone(module)
        if module.bias is not None:
            replace_param(new, "bias", module.bias)
        for side, keep in (("out", keep_out), ("in", keep_in)):
            if keep is None:
                continue
            k = _index(keep, module.weight.device)
            dim = self.weight_dims[side]
            _check(k, module.weight.shape[dim], module, "output" if side == "out" else "input")
            _select(new, "weight", dim, k)
            if side == "out":
                _select(new, "bias", 0, k)
        if hasattr(new, "nf"):
            new.nf = new.weight.shape[1]
        if hasattr(new, "nx"):
            new.nx = new.weight.shape[0]
        return new

    def slices(self, module, role):
        return module.weight.t() if role == "out" else module.weight

    def tensor_dims(self, module, role):
        if role == "in":
            return [("weight", 0)]
        return [("weight", 1)] + ([("bias", 0)] if module.bias is not None else [])

    def mask(self, module, keep_in, keep_out):
        with torch.no_grad():
            if keep_in is not None:
                module.weight[~_masks(module.weight.shape[0], keep_in).to(module.weight.device)] = 0
            if keep_out is not None:
                _zero_outputs(module, 1, keep_out)
        return module


register_layer(*TYPES, rule=transposed_linear, handler=TransposedLinearHandler())
