"""Rebuild layers with fewer channels: one stateless handler per module type.

A handler has ``prune(module, keep_in, keep_out) -> new module`` (``None`` keeps a side
whole) and ``slices(module, role) -> Tensor[channels, k]`` (the weights that belong to
each channel, for criteria). New modules keep dtype, device, ``requires_grad``,
train/eval state and any extra attributes of the original.

Example:
    >>> import torch.nn as nn
    >>> from surgery.ops import handler_for
    >>> conv = nn.Conv2d(8, 16, 3)
    >>> handler_for(conv).prune(conv, keep_in=None, keep_out=[0, 2, 5]).out_channels
    3
"""
from __future__ import annotations

import copy
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

from surgery.core.errors import ArgumentError

__all__ = ["Handler", "PerChannelHandler", "replace_param"]

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

    def channel_dims(self, module: nn.Module) -> tuple[int, int] | None:
        """``(in_dim, out_dim)``, counted from the end, when :meth:`mask` is the same as zeroing
        the removed channels of the module's input and output tensors along those dims:
        verification then masks the module's activations with hooks instead of copying its
        weights, and compares its outputs layer by layer. ``None`` (the default): it cannot
        (a layer that reads its weights in other ways, or whose output channels are not its
        rows)."""
        return None




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


def _fresh(module: nn.Module, name: str, value: torch.Tensor) -> None:
    """:func:`replace_param` for a tensor just made by indexing (no other reference: no copy)."""
    if name in module._parameters:
        old = module._parameters[name]
        module._parameters[name] = nn.Parameter(value.detach(), requires_grad=old.requires_grad)
    else:
        replace_param(module, name, value)


def _select(module: nn.Module, name: str, dim: int, keep: torch.Tensor) -> None:
    t = getattr(module, name, None)
    if t is not None and t.dim() > dim:
        _fresh(module, name, t.index_select(dim, keep.to(t.device)))


def _check(keep: Index, n: int, module: nn.Module, side: str) -> None:
    keep = np.asarray(keep.cpu() if isinstance(keep, torch.Tensor) else keep).reshape(-1)
    if keep.size == 0:
        raise ArgumentError(f"{type(module).__name__}: cannot remove every {side} channel; keep at least one")
    if keep.min() < 0 or keep.max() >= n:
        raise ArgumentError(f"{type(module).__name__}: {side} indices must be in [0, {n}); got {keep.tolist()}")


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
