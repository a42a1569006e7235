"""Rules for ops that move, merge, split or slice dimensions.

The reshape rule is general: input and output dims are factored into blocks of
equal size products; a block's channel variables are laid out in memory order and
read back in the output layout. Flatten into a Linear repeats each channel H*W
times; a split of the channel axis into (g, c/g) (channel shuffle, attention heads)
unifies the positions across the outer dims so removal stays rectangular.
"""
from __future__ import annotations

import builtins
import operator

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn

from surgery.core.errors import ArgumentError
from surgery.ops.context import RuleContext, first_input
from surgery.ops.elementwise import broadcast_axes
from surgery.ops.registry import register_function, register_layer, register_method

__all__ = ["reshape", "permute", "cat", "stack", "split", "chunk", "unbind", "getitem"]


# --------------------------------------------------------------------------- reshape
def _factor(a: tuple, b: tuple) -> list:
    """Blocks ``(in_dims, out_dims)`` whose sizes have equal products."""
    i = j = 0
    blocks = []
    while i < len(a) or j < len(b):
        ins, outs, pa, pb = [], [], 1, 1
        if i < len(a):
            ins.append(i)
            pa, i = pa * a[i], i + 1
        if j < len(b):
            outs.append(j)
            pb, j = pb * b[j], j + 1
        while pa != pb:
            if pa < pb and i < len(a):
                ins.append(i)
                pa, i = pa * a[i], i + 1
            elif pb < pa and j < len(b):
                outs.append(j)
                pb, j = pb * b[j], j + 1
            else:
                raise ArgumentError(f"shapes {tuple(a)} and {tuple(b)} do not factor")
        while j < len(b) and b[j] == 1 and not (i < len(a) and a[i] == 1):
            outs.append(j)  # a size-1 dim made from this block (view(n, g, c // g) with c == g)
            j += 1
        while i < len(a) and a[i] == 1 and not (j < len(b) and b[j] == 1):
            ins.append(i)
            i += 1
        blocks.append((ins, outs))
    return blocks


def reshape_axes(ctx: RuleContext, in_shape, axes: dict, out_shape, blocks: dict | None = None) -> dict:
    """Channel axes of ``x.reshape(out_shape)``; ``blocks`` (if given) receives, for every
    output dim, the output dims that share its factor block."""
    out = {}
    for ins, outs in _factor(tuple(in_shape), tuple(out_shape)):
        if blocks is not None:
            blocks.update({e: outs for e in outs})
        tracked = [d for d in ins if d in axes]
        if not tracked:
            continue
        if ins == outs and len(ins) == 1:  # untouched dim
            out[outs[0]] = axes[ins[0]]
            continue
        big = [d for d in tracked if in_shape[d] > 1]
        heads = [d for d in big if ctx.attention == "heads" and ctx.is_heads(axes[d])]
        if heads and len(big) > 1:  # whole heads merged with tracked dims (one shared key/value head's
            big = [d for d in big if d not in heads] + heads[-1:]  # dims, say): the heads are what goes
        for d in tracked:
            if d not in big[-1:]:
                ctx.freeze(axes[d], "reshape merges this channel dim with another tracked dim")
        if not big or not outs:
            continue
        out.update(_block_axes(ctx, ins, big[-1], axes[big[-1]], in_shape, outs, out_shape))
    return out


def _block_axes(ctx, ins, dim, vars_, in_shape, outs, out_shape) -> dict:
    view = [in_shape[d] if d == dim else 1 for d in ins]
    dense = np.broadcast_to(vars_.reshape(view), [in_shape[d] for d in ins])
    grid = np.ascontiguousarray(dense).reshape([out_shape[e] for e in outs])
    varying = [k for k in range(grid.ndim) if not np.all(grid == grid.take([0], axis=k))]
    if not varying:
        return {}
    if len(varying) > 1 and ctx.split_heads():
        return {outs[varying[-2]]: _whole_heads(ctx, grid, varying[-2])}
    keep = varying[-1]
    moved = np.moveaxis(grid, keep, -1).reshape(-1, grid.shape[keep])
    if len(varying) > 1:  # unify across the outer dims (heads, shuffle groups)
        for row in moved[1:]:
            ctx.unify(moved[0], row)
    return {outs[keep]: moved[0].copy()}


def _whole_heads(ctx, grid: np.ndarray, axis: int) -> np.ndarray:
    """Heads mode: every channel of head ``h`` (its q/k/v rows and all its dims) is one unit;
    the head axis carries one variable per head and the head dim is no longer tracked."""
    heads = np.moveaxis(grid, axis, 0).reshape(grid.shape[axis], -1)
    for row in heads:
        ctx.unify(np.full(len(row) - 1, row[0]), row[1:])
    ctx.add_heads(heads[:, 0])
    return heads[:, 0].copy()


def _size_args(node: fx.Node) -> tuple[list, tuple]:
    """The size literals of view/reshape/expand and the path to the first of them."""
    args = node.args
    if len(args) >= 2 and isinstance(args[1], (tuple, list)):
        return list(args[1]), ("args", 1)
    if len(args) >= 2:
        return list(args[1:]), ("args",)
    for key in ("shape", "size"):
        if key in node.kwargs:
            return list(node.kwargs[key]), ("kwargs", key)
    return [], ()


SIZE_OF = "surgery.size_of"  # node.meta: (tensor node, dim, tuple of dims, or None: all) a size was read from


SIZE_TAKERS = ("view", "reshape", torch.reshape, torch.ops.aten.view.default, torch.ops.aten.reshape.default)  # ops whose dynamic sizes _follow_dynamic_sizes handles


def _follow_dynamic_sizes(ctx: RuleContext, node: fx.Node, out: dict) -> None:
    """A dynamic size read from another tensor's dim (``reshape(B, G, P, D)`` with ``D`` from
    the block input) must stay equal to it: unify position-wise, or freeze if it is fixed."""
    sizes, _ = _size_args(node)
    source = node.args[0] if node.args else None
    for d, s in enumerate(sizes):
        origin = s.meta.get(SIZE_OF) if isinstance(s, fx.Node) else None
        if not origin or not isinstance(origin[1], int):
            continue
        src, sd = origin
        src_vars = (ctx.axes(src) or {}).get(sd)
        v = out.get(d)
        if v is None:  # this dim keeps its size, so the dim it is read from must too
            if src_vars is not None:
                ctx.freeze(src_vars, "its size fixes a dim of a reshape whose channels are not tracked")
            continue
        if src is source and src_vars is not None and len(src_vars) == len(v) and np.array_equal(src_vars, v):
            continue
        if src_vars is None:
            ctx.freeze(v, "a reshape size is read from a dim whose channels are not tracked")
        elif len(src_vars) == len(v):
            ctx.unify(src_vars, v)
        else:
            ctx.freeze(v, "a reshape size is read from another tensor")
            ctx.freeze(src_vars, "its size sets a reshape of another tensor")


def _patch_sizes(ctx: RuleContext, node: fx.Node, out: dict, blocks: dict | None = None) -> None:
    """Record literal sizes of tracked dims for patching. A literal that shares a reshape
    block with a size computed at run time (``c // g``) may feed that computation, so
    patching it alone is unsafe: those channels are frozen instead."""
    sizes, base = _size_args(node)
    offset = 1 if base == ("args",) else 0
    for d, v in out.items():
        if d < len(sizes) and isinstance(sizes[d], int) and sizes[d] != -1:
            partners = (blocks or {}).get(d, [d])
            if any(isinstance(sizes[e], fx.Node) for e in partners if e != d and e < len(sizes)):
                ctx.freeze(v, "a literal reshape size is combined with sizes computed at run time")
                continue
            path = base + (d + offset,) if base == ("args",) else base + (d,)
            ctx.add_patch(path, v)


def reshape(ctx: RuleContext, node: fx.Node):
    x = node.args[0] if node.args else node.kwargs.get("input")
    axes, in_shape, out_shape = ctx.axes(x) or {}, ctx.shape(x), ctx.out_shape()
    if out_shape is None or in_shape is None:
        ctx.freeze_all(axes, "reshape without tensor shapes")
        return None
    blocks: dict = {}
    out = reshape_axes(ctx, in_shape, axes, out_shape, blocks)
    if node.target in SIZE_TAKERS:
        _patch_sizes(ctx, node, out, blocks)
        _follow_dynamic_sizes(ctx, node, out)
    return out


register_method("view", "reshape", "flatten", "squeeze", "unsqueeze", "squeeze_",
                     "unsqueeze_", "unflatten")(reshape)


def _sized_by(ctx: RuleContext, out: dict, other_axes: dict, dims) -> None:
    """Output dims whose sizes are read from another tensor (``x.reshape_as(y)``) stay equal
    to that tensor's dims: one variable each, or both frozen when only one side is tracked."""
    for d in dims:
        v, ov = out.get(d), other_axes.get(d)
        if v is not None and ov is not None and len(v) == len(ov):
            ctx.unify(v, ov)
        elif v is not None or ov is not None:
            ctx.freeze_all([{0: v} if v is not None else {}, {0: ov} if ov is not None else {}],
                           "its size is read from another tensor whose channels are not tracked along it")


def reshape_as(ctx: RuleContext, node: fx.Node):
    """``x.reshape_as(y)`` / ``x.view_as(y)``: a reshape to ``y``'s shape, read when it runs."""
    x, other = node.args[0], node.args[1]
    axes, in_shape, out_shape = ctx.axes(x) or {}, ctx.shape(x), ctx.out_shape()
    if out_shape is None or in_shape is None:
        ctx.freeze_all([axes, ctx.axes(other) or {}], "reshape without tensor shapes")
        return None
    out = reshape_axes(ctx, in_shape, axes, out_shape)
    _sized_by(ctx, out, ctx.axes(other) or {}, range(len(out_shape)))
    return out


register_method("reshape_as", "view_as")(reshape_as)
register_function(torch.reshape, torch.flatten, torch.squeeze, torch.unsqueeze)(reshape)


# --------------------------------------------------------------------------- permute
def _perm_from_node(node: fx.Node, nd: int) -> list | None:
    t, args = node.target, node.args
    aten = torch.ops.aten
    if t in ("permute", torch.permute, aten.permute.default):
        dims = args[1] if len(args) == 2 and isinstance(args[1], (tuple, list)) else args[1:]
        dims = dims or node.kwargs.get("dims")
        return [d % nd for d in dims]
    if t in ("transpose", torch.transpose, "swapaxes", torch.swapaxes, aten.transpose.int, aten.swapaxes.default):
        a = args[1] if len(args) > 1 else node.kwargs.get("dim0")
        b = args[2] if len(args) > 2 else node.kwargs.get("dim1")
        perm = list(range(nd))
        perm[a % nd], perm[b % nd] = perm[b % nd], perm[a % nd]
        return perm
    if t in ("t", torch.t, aten.t.default):
        return list(range(nd))[::-1]
    if t in ("movedim", torch.movedim, aten.movedim.int):
        probe = np.zeros(tuple(range(1, nd + 1)), dtype=np.int8)
        return [s - 1 for s in np.moveaxis(probe, args[1], args[2]).shape]
    return None


def permute(ctx: RuleContext, node: fx.Node):
    x = node.args[0]
    axes, in_shape = ctx.axes(x) or {}, ctx.shape(x)
    perm = _perm_from_node(node, len(in_shape))
    if perm is None or any(not isinstance(p, int) for p in perm):
        ctx.freeze_all(axes, "permutation with dynamic dims")
        return {}
    return {new: axes[old] for new, old in enumerate(perm) if old in axes}


register_method("permute", "transpose", "swapaxes", "t", "movedim")(permute)
register_function(torch.permute, torch.transpose, torch.swapaxes, torch.t, torch.movedim)(permute)


# --------------------------------------------------------------------------- cat / stack
def _tensor_list(ctx: RuleContext, legacy_empty: bool = True) -> list:
    """(axes, shape) of each tensor in the list argument; ``legacy_empty``: leave out 1-D
    empty tensors, as cat does (an empty key/value cache), where the output has more dims."""
    seq = ctx.arg(0, "tensors")
    if isinstance(seq, fx.Node):  # torch.cat(y.chunk(2, 1)): one node holding the whole tuple
        axes, values = ctx.axes(seq) or [], ctx.value(seq) or []
        return [(a or {}, v.shape) for a, v in zip(axes, values)]
    parts = [(ctx.axes(t) or {}, ctx.shape(t)) for t in seq]
    nd = len(ctx.out_shape())
    return [(a, s) for a, s in parts if not (legacy_empty and len(s) == 1 and s[0] == 0 and nd > 1)]


def cat(ctx: RuleContext, node: fx.Node):
    parts, out_shape = _tensor_list(ctx), ctx.out_shape()
    nd = len(out_shape)
    dim = ctx.arg(1, "dim", 0) % nd
    out = {}
    others = [({d: v for d, v in a.items() if d != dim}, s) for a, s in parts]
    for d, v in _aligned(ctx, others, out_shape, dim).items():
        out[d] = v
    if any(dim in a for a, _ in parts):
        pieces = []
        for a, s in parts:
            if dim in a:
                pieces.append(a[dim])
            else:
                fixed = ctx.fresh(s[dim])
                ctx.freeze(fixed, "concatenated with a tensor whose channels are not tracked")
                pieces.append(fixed)
        out[dim] = np.concatenate(pieces)
    return out


def _aligned(ctx: RuleContext, parts: list, out_shape, skip: int | None) -> dict:
    """Unify same-position dims of equally shaped tensors (cat's non-cat dims, stack)."""
    shape = list(out_shape)
    if skip is not None:
        shape[skip] = 1
        parts = [(a, tuple(1 if d == skip else n for d, n in enumerate(s))) for a, s in parts]
    return broadcast_axes(ctx, parts, torch.Size(shape))


def stack(ctx: RuleContext, node: fx.Node):
    parts, out_shape = _tensor_list(ctx, legacy_empty=False), ctx.out_shape()
    dim = ctx.arg(1, "dim", 0) % len(out_shape)
    inner = _aligned(ctx, parts, parts[0][1], None)
    return {(d if d < dim else d + 1): v for d, v in inner.items()}


register_function(torch.cat, torch.concat, torch.concatenate)(cat)
register_function(torch.stack)(stack)


# --------------------------------------------------------------------------- split / chunk
def _pieces(ctx: RuleContext, node: fx.Node, dim: int):
    x = node.args[0]
    axes = ctx.axes(x) or {}
    sizes = [s.shape[dim] for s in ctx.value(node)]
    v = axes.get(dim)
    bounds = np.cumsum([0] + sizes)
    rest = {d: a for d, a in axes.items() if d != dim}
    outs = [dict(rest) for _ in sizes]
    if v is not None:
        for o, lo, hi in zip(outs, bounds[:-1], bounds[1:]):
            o[dim] = v[lo:hi]
    return v, sizes, outs


def _unify_pieces(ctx: RuleContext, outs: list, dim: int) -> bool:
    if len({len(o[dim]) for o in outs}) != 1:
        return False
    for o in outs[1:]:
        ctx.unify(outs[0][dim], o[dim])
    return True


def split(ctx: RuleContext, node: fx.Node):
    x = node.args[0]
    nd = len(ctx.shape(x))
    dim = ctx.arg(2, "dim", 0) % nd
    v, sizes, outs = _pieces(ctx, node, dim)
    if v is None:
        return outs
    spec = ctx.arg(1, "split_size_or_sections", node.kwargs.get("split_size"))
    path = ("args", 1) if len(node.args) > 1 else ("kwargs", "split_size_or_sections")
    if isinstance(spec, int) and _unify_pieces(ctx, outs, dim):
        ctx.add_patch(path, outs[0][dim])
    elif isinstance(spec, (list, tuple)) and all(isinstance(s, int) for s in spec):
        for k, o in enumerate(outs):
            ctx.add_patch(path + (k,), o[dim])
    else:
        ctx.freeze(v, "split into unequal or dynamic pieces")
    return outs


def chunk(ctx: RuleContext, node: fx.Node):
    x = node.args[0]
    dim = ctx.arg(2, "dim", 0) % len(ctx.shape(x))
    v, sizes, outs = _pieces(ctx, node, dim)
    if v is not None and not _unify_pieces(ctx, outs, dim):
        ctx.freeze(v, "chunk into unequal pieces")
    return outs


register_method("split")(split)
register_function(torch.split)(split)
def unbind(ctx: RuleContext, node: fx.Node):
    """``x.unbind(dim)``: one tensor per index of ``dim`` (q, k, v of a fused projection);
    a tracked ``dim`` would lose whole outputs, so it is frozen."""
    x = node.args[0]
    axes, shape = ctx.axes(x) or {}, ctx.shape(x)
    dim = ctx.arg(1, "dim", 0) % len(shape)
    if dim in axes:
        ctx.freeze(axes[dim], "unbind over a channel dimension")
    rest = {(d if d < dim else d - 1): v for d, v in axes.items() if d != dim}
    return [dict(rest) for _ in range(shape[dim])]


register_method("unbind")(unbind)
register_function(torch.unbind)(unbind)
register_method("chunk")(chunk)
register_function(torch.chunk)(chunk)


# --------------------------------------------------------------------------- getitem
def getitem(ctx: RuleContext, node: fx.Node):
    src, idx = node.args
    origin = src.meta.get(SIZE_OF) if isinstance(src, fx.Node) else None
    if origin and not isinstance(origin[1], int):  # x.shape[i], x.shape[-2:]: the dims read
        nd = len(ctx.shape(origin[0]) or ())
        dims = tuple(range(nd)) if origin[1] is None else origin[1]
        try:
            node.meta[SIZE_OF] = (origin[0], dims[idx]) if isinstance(idx, (int, slice)) and nd else origin
        except IndexError:
            node.meta[SIZE_OF] = origin
        return None
    axes = ctx.axes(src)
    if isinstance(axes, list):  # tuple/list output of an op
        sel = axes[idx]
        return list(sel) if isinstance(idx, slice) else sel
    if ctx.shape(src) is None:
        return None
    return _index_tensor(ctx, node, axes or {}, ctx.shape(src), idx)


def _index_tensor(ctx: RuleContext, node, axes: dict, shape, idx):
    if isinstance(idx, fx.Node) and ctx.shape(idx) is not None and not ctx.value(idx).dtype.is_floating_point:
        return _gather_rows(ctx, axes, idx)
    items = list(idx) if isinstance(idx, tuple) else [idx]
    if any(not (it is None or it is Ellipsis or isinstance(it, (int, slice))) for it in items):
        ctx.freeze_all(axes, "advanced indexing")
        return {}
    consuming = sum(1 for it in items if it is not None and it is not Ellipsis)
    out, d_in, d_out = {}, 0, 0
    for k, it in enumerate(items):
        if it is Ellipsis:
            for _ in range(len(shape) - consuming):
                if d_in in axes:
                    out[d_out] = axes[d_in]
                d_in, d_out = d_in + 1, d_out + 1
        elif it is None:
            d_out += 1
        elif isinstance(it, int):
            if d_in in axes:
                ctx.freeze(axes[d_in], "a single channel is selected by index")
            d_in += 1
        else:
            if d_in in axes:
                sliced = _slice_dim(ctx, axes[d_in], it, k, isinstance(idx, tuple))
                if sliced is not None:
                    out[d_out] = sliced
            d_in, d_out = d_in + 1, d_out + 1
    for d in range(d_in, len(shape)):
        if d in axes:
            out[d_out + d - d_in] = axes[d]
    return out


def _gather_rows(ctx: RuleContext, axes: dict, idx: fx.Node) -> dict:
    """``table[index]`` with an integer index tensor: rows (dim 0) are gathered, so dim 0 is
    positions, not channels; the other dims keep their channels (a relative-position bias
    table's head column)."""
    if 0 in axes:
        ctx.freeze(axes[0], "rows gathered by an index tensor")
    lead = len(ctx.shape(idx))
    return {d - 1 + lead: v for d, v in axes.items() if d > 0}


def _slice_dim(ctx: RuleContext, v: np.ndarray, s: slice, k: int, in_tuple: bool):
    bounds = (s.start, s.stop)
    literal = all(b is None or (isinstance(b, int) and b >= 0) for b in bounds)
    if not literal or s.step not in (None, 1):
        ctx.freeze(v, "channel slice with a step, negative or dynamic bounds")
        return None
    base = ("args", 1, k) if in_tuple else ("args", 1)
    for name, b in zip(("start", "stop"), bounds):
        if b is not None and b < len(v):
            ctx.add_patch(base + (name,), v[:b])
    return v[s]


register_function(operator.getitem)(getitem)


# --------------------------------------------------------------------------- expand / attrs
def expand(ctx: RuleContext, node: fx.Node):
    x = node.args[0]
    axes, in_shape, out_shape = ctx.axes(x) or {}, ctx.shape(x), ctx.out_shape()
    lead = len(out_shape) - len(in_shape)
    out = {}
    for d, v in axes.items():
        if in_shape[d] == out_shape[d + lead]:
            out[d + lead] = v
        else:
            ctx.freeze(v, "expand changes a channel dimension")
    if node.target == "expand_as":  # sizes read from the other tensor when it runs
        other = ctx.axes(node.args[1]) or {}
        spread = [d for d in range(len(out_shape)) if d < lead or (in_shape[d - lead] == 1 and out_shape[d] > 1)]
        out.update({d: other[d] for d in spread if d in other})
        _sized_by(ctx, out, other, [d for d in range(len(out_shape)) if d not in spread])
    copies = {}
    if ctx.split_heads():  # the one key/value head copied for every query head (MQA): a variable
        copies = {d: ctx.fresh(out_shape[d]) for d in range(lead, len(out_shape))  # per copy, so
                  if in_shape[d - lead] == 1 and out_shape[d] > 1 and d not in out  # query heads go
                  and d - lead - 1 not in axes}  # alone; copies of tracked key/value heads (GQA) stay
        out.update(copies)                       # tied to them, so a head goes with its copies
    if node.target == "expand":
        _patch_sizes(ctx, node, out)
    elif copies:
        _patch_sizes(ctx, node, copies)
    return out


register_method("expand", "expand_as")(expand)


def size_like(ctx: RuleContext, node: fx.Node):
    """Ops that return shapes or metadata, not tensors; sizes remember where they came from."""
    if node.target == "size" and isinstance(node.args[0], fx.Node):
        dim = ctx.arg(1, "dim")
        nd = len(ctx.shape(node.args[0]) or ())
        node.meta[SIZE_OF] = (node.args[0], dim % nd if isinstance(dim, int) and nd else None)
    elif node.target in ("numel", "nelement") and isinstance(node.args[0], fx.Node):
        node.meta[SIZE_OF] = (node.args[0], None)
    return None


register_method("size", "dim", "numel", "nelement")(size_like)


def attribute(ctx: RuleContext, node: fx.Node):
    name = node.args[1]
    if name == "shape" and isinstance(node.args[0], fx.Node):
        node.meta[SIZE_OF] = (node.args[0], None)
        return None
    if name in ("T", "mT"):
        x = node.args[0]
        nd = len(ctx.shape(x))
        perm = list(range(nd))
        perm[-1], perm[-2] = perm[-2], perm[-1]
        axes = ctx.axes(x) or {}
        return {new: axes[old] for new, old in enumerate(perm) if old in axes}
    if ctx.shape(node) is not None:
        ctx.freeze_all(ctx.axes(node.args[0]), f"tensor attribute '{name}'")
        return {}
    return None


register_function(builtins.getattr)(attribute)


def narrow(ctx: RuleContext, node: fx.Node):
    """``x.narrow(dim, start, length)``: a slice whose literals are patched."""
    x = node.args[0]
    axes, shape = ctx.axes(x) or {}, ctx.shape(x)
    dim, start, length = (ctx.arg(i, n) for i, n in ((1, "dim"), (2, "start"), (3, "length")))
    dim %= len(shape)
    out = dict(axes)
    v = axes.get(dim)
    if v is None:
        return out
    if not (isinstance(start, int) and isinstance(length, int) and start >= 0):
        ctx.freeze(v, "narrow with dynamic or negative bounds")
        return out
    ctx.add_patch(("args", 2), v[:start])
    ctx.add_patch(("args", 3), v[start:start + length])
    out[dim] = v[start:start + length]
    return out


register_method("narrow")(narrow)
register_function(torch.narrow)(narrow)


def flatten_module(ctx: RuleContext, node: fx.Node):
    axes, shape = first_input(ctx, node)
    return reshape_axes(ctx, shape, axes, ctx.out_shape())


def channel_shuffle(ctx: RuleContext, node: fx.Node):
    """Each of the g groups loses the same positions, read back transposed."""
    g = ctx.module().groups
    axes, _ = first_input(ctx, node)
    out = dict(axes)
    if 1 in axes:
        blocks = axes[1].reshape(g, -1)
        for row in blocks[1:]:
            ctx.unify(blocks[0], row)
        out[1] = blocks.T.reshape(-1).copy()
    return out


register_layer(nn.Flatten, nn.Unflatten, rule=flatten_module)
register_layer(nn.ChannelShuffle, rule=channel_shuffle)
