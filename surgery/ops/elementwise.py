"""Pass-through and elementwise rules: activations, dropout, pooling, arithmetic."""
from __future__ import annotations

import operator

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from surgery.ops.context import RuleContext
from surgery.ops.registry import register_function, register_layer, register_method

__all__ = ["passthrough", "elementwise", "broadcast_axes", "first_tensor"]


def first_tensor(ctx: RuleContext) -> fx.Node | None:
    for a in list(ctx.node.args) + list(ctx.node.kwargs.values()):
        if ctx.shape(a) is not None:
            return a
    return None


def passthrough(ctx: RuleContext, node: fx.Node):
    """Channels flow unchanged; a tracked dim whose size changes is frozen. Other tensor
    operands (``clamp(y, max=bound)``) broadcast against the output like an elementwise op."""
    operands = [a for a in list(node.args) + list(node.kwargs.values()) if ctx.shape(a) is not None]
    if len(operands) > 1:
        return elementwise(ctx, node)
    x = first_tensor(ctx)
    out_shape = ctx.out_shape()
    axes = ctx.axes(x) or {}
    if out_shape is None:
        ctx.freeze_all(axes, "op output is not a single tensor")
        return None
    in_shape = ctx.shape(x)
    if in_shape is None or len(in_shape) != len(out_shape):
        ctx.freeze_all(axes, "op changes the number of dimensions")
        return {}
    out = {}
    for d, v in axes.items():
        if in_shape[d] == out_shape[d]:
            out[d] = v
        else:
            ctx.freeze(v, "op changes the size of a channel dimension")
    return out


def broadcast_axes(ctx: RuleContext, operands: list, out_shape: torch.Size) -> dict:
    """Unify channels of broadcast operands position by position.

    ``operands`` is a list of ``(axes, shape)``. A tracked dim that meets an untracked
    full-size dim, or that is itself broadcast (size 1 against more), is frozen.
    """
    nd, out = len(out_shape), {}
    for d in range(nd):
        tracked, untracked_full = [], False
        for axes, shape in operands:
            k = d - (nd - len(shape))
            if k < 0:
                continue
            v = axes.get(k)
            if shape[k] == out_shape[d]:
                if v is not None:
                    tracked.append(v)
                elif shape[k] > 1:
                    untracked_full = True
            elif v is not None:
                ctx.freeze(v, "a channel dimension is broadcast against a larger one")
        if not tracked:
            continue
        for v in tracked[1:]:
            ctx.unify(tracked[0], v)
        if untracked_full:
            ctx.freeze(tracked[0], "combined elementwise with a tensor whose channels are not tracked")
        out[d] = tracked[0]
    return out


def elementwise(ctx: RuleContext, node: fx.Node):
    """add/sub/mul/div/where/...: broadcast and unify."""
    out_shape = ctx.out_shape()
    args = list(node.args) + list(node.kwargs.values())
    operands = [(ctx.axes(a) or {}, ctx.shape(a)) for a in args if ctx.shape(a) is not None]
    if out_shape is None:
        for axes, _ in operands:
            ctx.freeze_all(axes, "elementwise op without a tensor output")
        return None
    return broadcast_axes(ctx, operands, out_shape)


_ACT_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Softsign, nn.Hardtanh,
    nn.Hardshrink, nn.Softshrink, nn.Tanhshrink, nn.LogSigmoid, nn.Threshold, nn.RReLU,
    nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)
_SPATIAL_MODULES = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.LPPool1d, nn.LPPool2d, nn.Upsample,
    nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d, nn.ZeroPad2d, nn.ConstantPad1d,
    nn.ConstantPad2d, nn.ConstantPad3d, nn.ReflectionPad1d, nn.ReflectionPad2d,
    nn.ReplicationPad1d, nn.ReplicationPad2d, nn.ReplicationPad3d,
)
register_layer(*_ACT_MODULES, *_SPATIAL_MODULES, rule=passthrough)

_PASS_FUNCTIONS = (
    F.relu, F.relu_, torch.relu, torch.relu_, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu,
    F.gelu, F.silu, F.mish, F.hardswish, F.hardsigmoid, F.hardtanh, F.softplus, F.sigmoid,
    torch.sigmoid, F.tanh, torch.tanh, torch.exp, torch.abs, torch.neg, torch.sqrt,
    torch.rsqrt, torch.square, torch.clamp, torch.clip, torch.erf, torch.log, torch.sin,
    torch.cos, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout,
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
    F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d,
    F.interpolate, F.pad, operator.neg, operator.pos, torch.nn.functional.logsigmoid,
)
register_function(*_PASS_FUNCTIONS)(passthrough)
register_method(
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "exp", "abs", "neg", "sqrt",
    "rsqrt", "square", "clamp", "clamp_", "clip", "clamp_min", "clamp_max", "contiguous",
    "clone", "detach", "float", "double", "half", "bfloat16", "to", "type", "type_as",
    "cpu", "cuda", "requires_grad_", "hardtanh", "hardtanh_", "erf", "log", "sin", "cos",
)(passthrough)

_BINARY_FUNCTIONS = (
    operator.add, operator.sub, operator.mul, operator.truediv, operator.floordiv,
    operator.pow, operator.iadd, operator.isub, operator.imul, operator.itruediv,
    torch.add, torch.sub, torch.subtract, torch.mul, torch.multiply, torch.div,
    torch.true_divide, torch.maximum, torch.minimum, torch.pow, torch.where,
    torch.masked_fill,
)
register_function(*_BINARY_FUNCTIONS)(elementwise)
register_method(
    "add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "true_divide", "pow",
    "maximum", "minimum", "masked_fill", "masked_fill_", "where", "rsub",
)(elementwise)


# by qualified name, so the engine does not import torchvision (seconds) to know this function
register_function("torchvision.ops.stochastic_depth.stochastic_depth")(passthrough)
