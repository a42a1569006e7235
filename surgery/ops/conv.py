"""Convolutions (1-3d, transposed, grouped, depthwise): channel rule and rewrite handler.

Example:
    >>> import torch.nn as nn
    >>> ConvHandler().prune(nn.Conv2d(8, 16, 3), keep_in=None, keep_out=[0, 2, 5]).out_channels
    3
"""
from __future__ import annotations

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn

from surgery.core.errors import ArgumentError
from surgery.criteria.base import conv_rows
from surgery.ops.context import RuleContext, first_input, freeze_other_dims
from surgery.ops.handler import Handler, _check, _clone, _fresh, _index, _masks, _zero_outputs
from surgery.ops.registry import register_layer


_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def conv(ctx: RuleContext, node: fx.Node):
    """groups=1: consumer + producer. Depthwise: output channels follow their input
    channel. Other grouped convs: removal balanced across groups (unified positions)."""
    m, name = ctx.module(), node.target
    axes, shape = first_input(ctx, node)
    cdim = 1 if len(shape) == m.weight.dim() else 0  # unbatched input
    freeze_other_dims(ctx, axes, cdim)
    g, cin, cout = m.groups, m.in_channels, m.out_channels
    in_vars = axes.get(cdim)
    if g > 1 and cin == g:  # depthwise, channel multiplier cout // g
        if in_vars is None:
            in_vars = ctx.fresh(cin)
            ctx.freeze(in_vars, "depthwise conv reads a tensor whose channels are not tracked")
        out = ctx.add_slot(name, "out", "producer", np.repeat(in_vars, cout // g))
        return {cdim: out}
    if in_vars is not None:
        blocks = in_vars.reshape(g, cin // g)
        for row in blocks[1:]:
            ctx.unify(blocks[0], row)
        ctx.add_slot(name, "in", "consumer", in_vars)
    out = ctx.add_slot(name, "out", "producer", np.tile(ctx.fresh(cout // g), g))
    return {cdim: out}



_PLAIN = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


class ConvHandler(Handler):
    """Plain, depthwise (whole groups removed) and grouped convs (balanced removal)."""
    replaces = ("weight", "bias")

    def prune(self, module, keep_in, keep_out):
        g, cin, cout = module.groups, module.in_channels, module.out_channels
        for keep, n, side in ((keep_in, cin, "input"), (keep_out, cout, "output")):
            if keep is not None:
                _check(keep, n, module, side)
        if g == 1:
            return self._dense(module, keep_in, keep_out)
        if g == cin == cout and not isinstance(module, nn.modules.conv._ConvTransposeNd):
            keep = _same(keep_in, keep_out)
            if keep is not None:  # depthwise, one filter per channel: the kept channels' filters
                return self._depthwise(module, keep)
        im = _masks(cin, keep_in).numpy().reshape(g, -1)
        om = _masks(cout, keep_out).numpy().reshape(g, -1)
        if keep_in is None:  # a group that loses all inputs or all outputs is removed whole
            im &= om.any(1, keepdims=True)
        if keep_out is None:
            om &= im.any(1, keepdims=True)
        alive = im.any(1) & om.any(1)
        whole = bool((im.all(1) == alive).all() and (om.all(1) == alive).all())
        if whole:
            return self._rebuild(module, alive, im[alive][0], om[alive][0], int(alive.sum()))
        if not (im == im[0]).all() or not (om == om[0]).all():
            raise ArgumentError(
                f"{type(module).__name__}(groups={g}): channel removal must either remove whole "
                f"groups or the same positions in every group (balanced)")
        return self._rebuild(module, np.ones(g, dtype=bool), im[0], om[0], g)

    def _dense(self, m, keep_in, keep_out):
        """groups=1: the kept rows and columns of the weight (one index_select per side)."""
        new = _clone(m)
        w = m.weight
        in_dim, out_dim = (0, 1) if isinstance(m, nn.modules.conv._ConvTransposeNd) else (1, 0)
        if keep_out is not None:
            w = w.index_select(out_dim, _index(keep_out, w.device))
            if m.bias is not None:
                _fresh(new, "bias", m.bias.index_select(0, _index(keep_out, m.bias.device)))
        if keep_in is not None:
            w = w.index_select(in_dim, _index(keep_in, w.device))
        if w is not m.weight:
            _fresh(new, "weight", w)
        new.in_channels, new.out_channels = w.shape[in_dim], w.shape[out_dim]
        return new

    def _depthwise(self, m, keep):
        new = _clone(m)
        _fresh(new, "weight", m.weight.index_select(0, _index(keep, m.weight.device)))
        if m.bias is not None:
            _fresh(new, "bias", m.bias.index_select(0, _index(keep, m.bias.device)))
        new.in_channels = new.out_channels = new.groups = new.weight.shape[0]
        return new

    def _rebuild(self, m, alive, in_local, out_local, groups):
        """Grouped conv: the kept positions ``in_local``/``out_local`` of every kept group."""
        new = _clone(m)
        in_idx, out_idx = _group_index(alive, in_local), _group_index(alive, out_local)
        rows, cols = (in_idx, np.flatnonzero(out_local)) if isinstance(m, nn.modules.conv._ConvTransposeNd) \
            else (out_idx, np.flatnonzero(in_local))  # weight [cin, cout/g, k...] / [cout, cin/g, k...]
        w = m.weight.index_select(0, _index(rows, m.weight.device)).index_select(1, _index(cols, m.weight.device))
        _fresh(new, "weight", w)
        if m.bias is not None:
            _fresh(new, "bias", m.bias.index_select(0, _index(out_idx, m.bias.device)))
        new.in_channels, new.out_channels, new.groups = len(in_idx), len(out_idx), groups
        return new

    def slices(self, module, role):
        return conv_rows(module, role)

    def tensor_dims(self, module, role):
        transposed = isinstance(module, nn.modules.conv._ConvTransposeNd)
        if module.groups == module.in_channels == module.out_channels and not transposed:  # depthwise:
            return [("weight", 0)] + ([("bias", 0)] if module.bias is not None else []) if role == "out" else []
        if module.groups != 1:  # its rows are its channels, the input side has none of its own
            return None
        dim = 0 if (role == "out") != transposed else 1
        return [("weight", dim)] + ([("bias", 0)] if role == "out" and module.bias is not None else [])

    def channel_dims(self, module):
        if type(module) not in _PLAIN:  # transposed convs, subclasses with their own forward
            return None
        channel = -(len(module.kernel_size) + 1)  # batched or not: (N,) C, *spatial
        return channel, channel

    def mask(self, module, keep_in, keep_out):
        if keep_out is not None and not isinstance(module, nn.modules.conv._ConvTransposeNd):
            with torch.no_grad():
                _zero_outputs(module, 0, keep_out)
        if keep_in is None:
            return module
        gone = ~_masks(module.in_channels, keep_in)
        with torch.no_grad():
            if isinstance(module, nn.modules.conv._ConvTransposeNd):  # [cin, cout/g, k...]
                module.weight[gone.to(module.weight.device)] = 0
            else:  # input channel c is column c % (cin/g) of its group's rows
                g, per = module.groups, module.in_channels // module.groups
                w = module.weight.view(g, module.out_channels // g, per, *module.weight.shape[2:])
                cols = gone.reshape(g, per).to(w.device)
                w.masked_fill_(cols[:, None, :].reshape(g, 1, per, *([1] * (w.dim() - 3))), 0)
        return module


def _same(keep_in, keep_out):
    """The one index both sides keep (either may be None), or None when they differ."""
    if keep_in is None or keep_out is None:
        return keep_out if keep_in is None else keep_in
    a, b = np.asarray(keep_in), np.asarray(keep_out)
    return a if a.shape == b.shape and np.array_equal(a, b) else None


def _group_index(alive: np.ndarray, local: np.ndarray) -> np.ndarray:
    """Flat indices of the kept positions ``local`` inside every kept group ``alive``, group-major."""
    return (np.flatnonzero(alive)[:, None] * len(local) + np.flatnonzero(local)[None, :]).reshape(-1)


register_layer(*_CONVS, rule=conv, handler=ConvHandler())
