"""Rules for the aten ops of aten-level graphs (``tracer="export"`` and ``tracer="run"``).

Most reuse the torch-level rules (their arguments are positional in the same order);
the rest are small: ``slice``/``select``/``index`` on a dim, ``embedding``, and no-op
bookkeeping ops (``_assert_tensor_metadata``) that must not freeze anything.
"""
from __future__ import annotations

import torch
import torch.fx as fx

from surgery.ops import attention, functional, reductions, shape_ops
from surgery.ops.elementwise import elementwise, passthrough
from surgery.ops.context import RuleContext
from surgery.ops.registry import register_function, register_op

__all__ = ["ATEN_RULES", "slice_tensor", "select_int", "embedding_fn", "bookkeeping", "roi_pool", "index_put"]

aten = torch.ops.aten


def _ops(*names: str) -> list:
    """Every overload of each named aten op that exists in this torch."""
    out = []
    for name in names:
        packet = getattr(aten, name, None)
        if packet is not None:
            out += [getattr(packet, o) for o in packet.overloads()]
    return out


def bookkeeping(ctx: RuleContext, node: fx.Node):
    """Asserts and metadata ops: they read a tensor but produce no channels."""
    return None


def slice_tensor(ctx: RuleContext, node: fx.Node):
    """``aten.slice(x, dim, start, end, step)``: a tracked dim keeps the sliced variables."""
    x = node.args[0]
    axes, shape = dict(ctx.axes(x) or {}), ctx.shape(x)
    dim = ctx.arg(1, "dim", 0) % len(shape)
    start, end, step = ctx.arg(2, "start"), ctx.arg(3, "end"), ctx.arg(4, "step", 1)
    if dim not in axes:
        return axes
    bounds = [b for b in (start, end) if b is not None]
    if step != 1 or not all(isinstance(b, int) for b in bounds):
        ctx.freeze(axes[dim], "channel slice with a step or dynamic bounds")
        axes.pop(dim)
        return axes
    axes[dim] = axes[dim][slice(start, end)]
    if len(axes[dim]) != ctx.out_shape()[dim]:
        ctx.freeze(axes.pop(dim), "channel slice of unexpected length")
    return axes


def select_int(ctx: RuleContext, node: fx.Node):
    """``aten.select(x, dim, index)``: the dim disappears (frozen if it held channels)."""
    x = node.args[0]
    axes, shape = ctx.axes(x) or {}, ctx.shape(x)
    dim = ctx.arg(1, "dim") % len(shape)
    if dim in axes:
        ctx.freeze(axes[dim], "a single channel is selected by index")
    return {(d if d < dim else d - 1): v for d, v in axes.items() if d != dim}


def index_tensor(ctx: RuleContext, node: fx.Node):
    """``aten.index(x, [idx])``: rows gathered by one integer index tensor."""
    x, indices = node.args[0], node.args[1]
    axes = ctx.axes(x) or {}
    if len(indices) == 1 and isinstance(indices[0], fx.Node):
        return shape_ops._gather_rows(ctx, axes, indices[0])
    ctx.freeze_all(axes, "advanced indexing")
    return {}


def embedding_fn(ctx: RuleContext, node: fx.Node):
    """``aten.embedding(weight[num, dim], ids)``: the output's last dim is the weight's dim 1."""
    w = ctx.axes(node.args[0]) or {}
    if 0 in w:
        ctx.freeze(w[0], "embedding rows are tokens, not channels")
    out_nd = len(ctx.out_shape())
    return {out_nd - 1: w[1]} if 1 in w else {}


def _softmax(ctx: RuleContext, node: fx.Node):
    return reductions.along_dim(ctx, node)


_FILLS = {"zeros", "ones", "full", "empty", "new_zeros", "new_ones", "new_full", "new_empty", "zeros_like",
          "ones_like", "full_like", "empty_like"}


def _filled(node) -> bool:
    """Whether ``node`` makes a tensor of one constant value (zeros, full, empty): its
    channels are nobody's, and it can take those of what is written into it."""
    return isinstance(node, fx.Node) and getattr(getattr(node.target, "overloadpacket", None),
                                                 "__name__", None) in _FILLS


def index_put(ctx: RuleContext, node: fx.Node):
    """``aten.index_put(self, indices, values)`` (``self[idx] = values``): the indexed leading
    dims are rows chosen by data (frozen if they hold channels); the other dims of ``self``
    meet the values' trailing dims as in an elementwise op, except that a ``self`` made by a
    constant fill (``torch.zeros``, as MultiScaleRoIAlign does) takes the values' channels."""
    base, indices, values = node.args[0], node.args[1], node.args[2]
    n, shape, axes = len(indices), ctx.shape(base), dict(ctx.axes(base) or {})
    vshape, vaxes = ctx.shape(values), dict(ctx.axes(values) or {})
    ctx.freeze_all({d: v for d, v in axes.items() if d < n}, "rows written by index")
    if vshape is None:
        return {d: v for d, v in axes.items() if d >= n}
    out, lead = {}, len(vshape) - (len(shape) - n)
    ctx.freeze_all({k: v for k, v in vaxes.items() if k < lead}, "written at rows chosen by index")
    for d in range(n, len(shape)):
        k = d - n + lead
        mine, theirs = axes.get(d), vaxes.get(k) if k >= 0 else None
        if k < 0 or vshape[k] != shape[d]:  # the values broadcast along this dim
            if theirs is not None:
                ctx.freeze(theirs, "a channel dimension is broadcast against a larger one")
            if mine is not None:
                out[d] = mine
        elif mine is not None and theirs is not None:
            ctx.unify(mine, theirs)
            out[d] = mine
        elif theirs is not None and _filled(base):
            out[d] = theirs
        elif (mine if mine is not None else theirs) is not None and shape[d] > 1:
            ctx.freeze(mine if mine is not None else theirs, "written together with a tensor whose channels are "
                                                             "not tracked")
    return out


def roi_pool(ctx: RuleContext, node: fx.Node):
    """``torchvision::roi_align/roi_pool(x[N, C, H, W], rois, ...)``: each box pools every
    channel on its own (output ``[boxes, C, h, w]``); roi_pool also returns per-channel argmax."""
    axes = ctx.axes(node.args[0]) or {}
    ctx.freeze_all({d: v for d, v in axes.items() if d != 1}, "pooled by boxes")
    out = {1: axes[1]} if 1 in axes else {}
    return [out, dict(out)] if isinstance(ctx.value(node), list) else out


_ELEMENTWISE = ("add", "sub", "rsub", "mul", "div", "maximum", "minimum", "where", "masked_fill", "pow",
                "type_as", "floor_divide")
_PER_VALUE = ("neg", "silu", "gelu", "relu", "relu6", "leaky_relu", "hardtanh", "hardswish", "hardsigmoid",
              "sigmoid", "tanh", "exp", "rsqrt", "sqrt", "abs", "erf", "log", "sin", "cos", "mish", "elu",
              "softplus", "clamp", "clamp_min", "clamp_max", "square", "reciprocal", "tril", "triu")
_SPATIAL = ("max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d",
            "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "_adaptive_avg_pool2d",
            "upsample_nearest1d", "upsample_nearest2d", "upsample_nearest3d", "_upsample_nearest_exact2d",
            "upsample_linear1d", "upsample_bilinear2d", "upsample_bicubic2d", "upsample_trilinear3d",
            "pad", "constant_pad_nd", "reflection_pad2d", "replication_pad2d")


def _in_place(names: tuple) -> tuple:
    """The in-place forms (``add_``): graphs recorded from a run keep them (export's are functional)."""
    return tuple(n + "_" for n in names)


ATEN_RULES = {
    shape_ops.reshape: _ops("view", "reshape", "_unsafe_view", "unsqueeze", "squeeze", "flatten", "unflatten"),
    shape_ops.permute: _ops("permute", "transpose", "t", "swapaxes", "movedim"),
    shape_ops.expand: _ops("expand", "expand_as"),
    shape_ops.cat: _ops("cat", "concat"),
    shape_ops.stack: _ops("stack"),
    shape_ops.split: _ops("split", "split_with_sizes"),
    shape_ops.chunk: _ops("chunk"),
    shape_ops.unbind: _ops("unbind"),
    slice_tensor: _ops("slice"),
    select_int: _ops("select"),
    index_tensor: _ops("index"),
    index_put: _ops("index_put", "index_put_"),
    embedding_fn: _ops("embedding"),
    elementwise: _ops(*_ELEMENTWISE, *_in_place(_ELEMENTWISE)),
    passthrough: _ops(*_PER_VALUE, *_in_place(_PER_VALUE), *_SPATIAL,
                      "clone", "contiguous", "alias", "detach", "detach_", "_to_copy", "to", "dropout",
                      "lift_fresh_copy", "zeros_like", "ones_like", "full_like", "empty_like"),
    reductions.reduce: _ops("mean", "sum", "amax", "amin", "var", "std", "prod", "logsumexp"),
    _softmax: _ops("softmax", "_softmax", "log_softmax", "_log_softmax"),
    reductions.matmul: _ops("matmul", "bmm"),
    reductions.einsum: _ops("einsum"),
    attention.scaled_dot_product_attention: _ops("scaled_dot_product_attention"),
    functional.linear_fn: _ops("linear"),
    functional.layer_norm_fn: _ops("layer_norm"),
    functional.conv_fn: _ops("conv2d", "conv1d", "conv3d"),
    functional.batch_norm_fn: _ops("batch_norm"),  # its per-channel tensors in another order: all unify alike
    functional.group_norm_fn: _ops("group_norm"),
    bookkeeping: _ops("_assert_tensor_metadata", "sym_size", "sym_numel", "_assert_scalar",
                      "sym_constrain_range_for_size", "_assert_async"),
}
for _rule, _targets in ATEN_RULES.items():
    register_function(*_targets)(_rule)
register_op("torchvision::roi_align", "torchvision::roi_pool")(roi_pool)  # by name: torchvision not imported
