"""Rebuild layers with fewer channels: one stateless handler per module type.

A handler has ``prune(module, keep_in, keep_out) -> new module`` (``None`` keeps a side
whole) and ``slices(module, role) -> Tensor[channels, k]`` (the weights that belong to
each channel, for criteria). New modules keep dtype, device, ``requires_grad``,
train/eval state and any extra attributes of the original.

Example:
    >>> import torch.nn as nn
    >>> from surgery.handlers import handler_for
    >>> conv = nn.Conv2d(8, 16, 3)
    >>> handler_for(conv).prune(conv, keep_in=None, keep_out=[0, 2, 5]).out_channels
    3
"""
from __future__ import annotations

import copy
import warnings
from typing import Callable, Sequence

import torch
import torch.nn as nn

from surgery.criteria.base import conv_rows

__all__ = ["Handler", "PerChannelHandler", "register_handler", "handler_for", "HANDLERS", "replace_param"]

Index = Sequence[int] | torch.Tensor | None


class Handler:
    """Base class: subclasses implement ``prune`` and ``slices``.

    ``replaces`` names the module's own tensors that ``prune`` always replaces when a side
    is given; the rewriter does not copy those before rebuilding (speed, memory).
    """
    replaces: tuple = ()

    def prune(self, module: nn.Module, keep_in: Index, keep_out: Index) -> nn.Module:
        raise NotImplementedError

    def slices(self, module: nn.Module, role: str) -> torch.Tensor:
        raise NotImplementedError

    def tensor_dims(self, module: nn.Module, role: str) -> list | None:
        """``[(attribute, dim)]``: the module's tensors (and their dim) that a side indexes, so
        that tied parameters couple the channels they share. ``None``: unknown (a tied
        parameter of such a layer freezes its channels)."""
        return None

    def mask(self, module: nn.Module, keep_in: Index, keep_out: Index) -> nn.Module:
        """For verification: make ``module`` (a throw-away copy, same shapes) ignore the input
        channels outside ``keep_in``, so that it computes what the pruned module computes on
        the kept channels. The default changes nothing, which is right for layers that do
        not mix channels (per-channel scales, activations); a layer that mixes them must
        override it, or verification reports a mismatch (it never passes a wrong rewrite)."""
        return module


HANDLERS: dict[type, Handler] = {}


def register_handler(*types: type) -> Callable:
    """Class decorator registering a handler instance for module types."""
    def deco(cls):
        for t in types:
            old = HANDLERS.get(t)
            if old is not None and type(old) is not cls:
                warnings.warn(f"replacing the handler for {getattr(t, '__name__', t)} ({type(old).__name__} -> {cls.__name__})",
                              stacklevel=2)
            HANDLERS[t] = cls()
        return cls
    return deco


def handler_for(module: nn.Module) -> Handler:
    for cls in type(module).__mro__:
        if cls in HANDLERS:
            return HANDLERS[cls]
        if f"{cls.__module__}.{cls.__qualname__}" in HANDLERS:
            return HANDLERS[f"{cls.__module__}.{cls.__qualname__}"]
    raise TypeError(
        f"no rewrite handler for {type(module).__name__}. Register one with "
        f"@surgery.extend.register_handler({type(module).__name__}) on a Handler subclass that "
        f"implements prune(module, keep_in, keep_out) and slices(module, role).")


def _index(keep: Index, device) -> torch.Tensor:
    return torch.as_tensor(keep, dtype=torch.long, device=device).reshape(-1)


def _clone(module: nn.Module) -> nn.Module:
    """Shallow copy with its own parameter/buffer dicts (tensors shared until replaced)."""
    new = copy.copy(module)
    new._parameters = dict(module._parameters)
    new._buffers = dict(module._buffers)
    new._modules = dict(module._modules)
    return new


def replace_param(module: nn.Module, name: str, value: torch.Tensor) -> None:
    """Set parameter or buffer ``name`` to ``value``, keeping its kind and requires_grad."""
    old = getattr(module, name)
    if name in module._parameters:
        module._parameters[name] = nn.Parameter(value.detach().clone(), requires_grad=old.requires_grad)
    elif name in module._buffers:
        module._buffers[name] = value.detach().clone()
    else:  # a plain tensor attribute read in forward
        object.__setattr__(module, name, value.detach().clone())


def _select(module: nn.Module, name: str, dim: int, keep: torch.Tensor) -> None:
    t = getattr(module, name, None)
    if t is not None and t.dim() > dim:
        replace_param(module, name, t.index_select(dim, keep.to(t.device)))


def _check(keep: torch.Tensor, n: int, module: nn.Module, side: str) -> None:
    if keep.numel() == 0:
        raise ValueError(f"{type(module).__name__}: cannot remove every {side} channel; keep at least one")
    if keep.min() < 0 or keep.max() >= n:
        raise ValueError(f"{type(module).__name__}: {side} indices must be in [0, {n}); got {keep.tolist()}")


# --------------------------------------------------------------------------- convolutions
def _zero_outputs(module: nn.Module, dim: int, keep_out: Index) -> None:
    """Verification masks: removed output channels are zero where they are made (weight
    slices along ``dim`` and bias), so ops without a layer that read them (the q.k product of
    attention, rotary embeddings) see what the pruned model sees."""
    gone = ~_masks(module.weight.shape[dim], keep_out).to(module.weight.device)
    module.weight.index_fill_(dim, torch.nonzero(gone).flatten(), 0)
    if getattr(module, "bias", None) is not None:
        module.bias[gone] = 0


def _masks(n: int, keep: Index) -> torch.Tensor:
    mask = torch.ones(n, dtype=torch.bool)
    if keep is not None:
        mask[:] = False
        mask[_index(keep, "cpu")] = True
    return mask


@register_handler(nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
class ConvHandler(Handler):
    """Plain, depthwise (whole groups removed) and grouped convs (balanced removal)."""
    replaces = ("weight", "bias")

    def prune(self, module, keep_in, keep_out):
        g, cin, cout = module.groups, module.in_channels, module.out_channels
        for keep, n, side in ((keep_in, cin, "input"), (keep_out, cout, "output")):
            if keep is not None:
                _check(_index(keep, "cpu"), n, module, side)
        im = _masks(cin, keep_in).reshape(g, -1)
        om = _masks(cout, keep_out).reshape(g, -1)
        if g > 1:  # a group that loses all inputs or all outputs is removed whole
            if keep_in is None:
                im &= om.any(1, keepdim=True)
            if keep_out is None:
                om &= im.any(1, keepdim=True)
        alive = im.any(1) & om.any(1)
        whole = bool((im.all(1) == alive).all() and (om.all(1) == alive).all())
        if whole:
            return self._rebuild(module, alive, im[alive][0], om[alive][0], int(alive.sum()))
        if not (im == im[0]).all() or not (om == om[0]).all():
            raise ValueError(
                f"{type(module).__name__}(groups={g}): channel removal must either remove whole "
                f"groups or the same positions in every group (balanced)")
        return self._rebuild(module, torch.ones(g, dtype=torch.bool), im[0], om[0], g)

    def _rebuild(self, m, alive, in_local, out_local, groups):
        new = _clone(m)
        transposed = isinstance(m, nn.modules.conv._ConvTransposeNd)
        g = m.groups
        in_idx = _group_index(alive, in_local)
        out_idx = _group_index(alive, out_local)
        w = m.weight
        if transposed:  # weight [cin, cout/g, k...]
            w = w[in_idx.to(w.device)][:, torch.nonzero(out_local).flatten().to(w.device)]
        else:  # weight [cout, cin/g, k...]
            w = w[out_idx.to(w.device)][:, torch.nonzero(in_local).flatten().to(w.device)]
        replace_param(new, "weight", w)
        if m.bias is not None:
            replace_param(new, "bias", m.bias[out_idx.to(m.bias.device)])
        new.in_channels, new.out_channels, new.groups = len(in_idx), len(out_idx), groups
        return new

    def slices(self, module, role):
        return conv_rows(module, role)

    def tensor_dims(self, module, role):
        if module.groups != 1:
            return None
        transposed = isinstance(module, nn.modules.conv._ConvTransposeNd)
        dim = 0 if (role == "out") != transposed else 1
        return [("weight", dim)] + ([("bias", 0)] if role == "out" and module.bias is not None else [])

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


def _group_index(alive: torch.Tensor, local: torch.Tensor) -> torch.Tensor:
    """Flat indices of the kept positions ``local`` inside every kept group ``alive``, group-major."""
    n = local.numel()
    return (torch.nonzero(alive).flatten()[:, None] * n + torch.nonzero(local).flatten()[None, :]).flatten()


# --------------------------------------------------------------------------- linear, embedding
@register_handler(nn.Linear)
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

    def mask(self, module, keep_in, keep_out):
        with torch.no_grad():
            if keep_in is not None:
                module.weight[:, ~_masks(module.in_features, keep_in).to(module.weight.device)] = 0
            if keep_out is not None:
                _zero_outputs(module, 0, keep_out)
        return module


@register_handler(nn.Embedding)
class EmbeddingHandler(Handler):
    replaces = ("weight",)

    def prune(self, module, keep_in, keep_out):
        new = _clone(module)
        if keep_out is not None:
            k = _index(keep_out, module.weight.device)
            _check(k, module.embedding_dim, module, "embedding")
            _select(new, "weight", 1, k)
            new.embedding_dim = k.numel()
        return new

    def slices(self, module, role):
        return module.weight.t()

    def tensor_dims(self, module, role):
        return [("weight", 1)]


# --------------------------------------------------------------------------- per-channel layers
class PerChannelHandler(Handler):
    """Layers whose parameters and buffers are indexed by channel along dim 0."""
    size_attr = "num_features"
    tensors = ("weight", "bias", "running_mean", "running_var")

    @property
    def replaces(self) -> tuple:
        return self.tensors

    def prune(self, module, keep_in, keep_out):
        keep = keep_out if keep_out is not None else keep_in
        new = _clone(module)
        if keep is None:
            return new
        k = _index(keep, "cpu")
        _check(k, self._size(module), module, "channel")
        for name in self.tensors:
            _select(new, name, 0, k)
        self._resize(new, module, k.numel())
        return new

    def _size(self, module) -> int:
        n = getattr(module, self.size_attr)
        return n[0] if isinstance(n, tuple) else n

    def _resize(self, new, old, n):
        setattr(new, self.size_attr, n)

    def tensor_dims(self, module, role):
        return [(name, 0) for name in self.tensors if getattr(module, name, None) is not None]

    def slices(self, module, role):
        w = getattr(module, "weight", None)
        if w is None:
            return torch.zeros(self._size(module), 0)
        return w.reshape(w.shape[0], -1)


register_handler(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
                 nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)(PerChannelHandler)


@register_handler(nn.GroupNorm)
class GroupNormHandler(PerChannelHandler):
    size_attr, tensors = "num_channels", ("weight", "bias")

    def _resize(self, new, old, n):
        if old.num_groups > 1:
            per = old.num_channels // old.num_groups
            if n % per:
                raise ValueError("GroupNorm: remove whole groups of channels "
                                 f"({per} channels per group)")
            new.num_groups = n // per
        new.num_channels = n


@register_handler(nn.LayerNorm)
class LayerNormHandler(PerChannelHandler):
    size_attr, tensors = "normalized_shape", ("weight", "bias")

    def prune(self, module, keep_in, keep_out):
        if len(module.normalized_shape) != 1:
            raise ValueError("LayerNorm over several dims cannot be pruned")
        return super().prune(module, keep_in, keep_out)

    def _resize(self, new, old, n):
        new.normalized_shape = (n,)


@register_handler(nn.PReLU)
class PReLUHandler(PerChannelHandler):
    size_attr, tensors = "num_parameters", ("weight",)
