"""Shapes without data: run a traced graph on the meta device (no values, no allocation).

The channel rules need shapes, not values. :func:`propagate_meta` runs the graph with every
parameter, buffer and input on the meta device (the user's tensors are never moved: the
graph sees meta stand-ins for the run). Layers whose output shape follows from their input
shape by a formula (activations, norms, dropout; conv and linear) are not run at all; every
other op runs its meta kernel. A graph that needs values (``.item()``, a branch on data)
cannot run on meta: :class:`NeedsValues` says so and the caller runs it for real instead.

Example:
    >>> import torch
    >>> from surgery.capture.fx import symbolic_trace
    >>> gm = symbolic_trace(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.ReLU()))
    >>> propagate_meta(gm, torch.randn(1, 3, 32, 32))
    >>> [n.meta["surgery.value"].shape for n in gm.graph.nodes][-1]
    torch.Size([1, 8, 15, 15])
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
import torch.fx as fx
import torch.nn as nn
from torch.nn.utils.stateless import _reparametrize_module

from surgery.capture.fx import Recorder, placeholder_args, symbolic_trace
from surgery.core.inputs import as_inputs, evaluating

__all__ = ["propagate_meta", "run_meta", "NeedsValues", "on_meta", "SAME_SHAPE"]

SAME_SHAPE = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.ReLU, nn.ReLU6, nn.Hardtanh,
              nn.GELU, nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.LeakyReLU, nn.PReLU, nn.ELU,
              nn.Mish, nn.Softplus, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Identity)


class NeedsValues(Exception):
    """The graph reads a value the meta device does not have; run it on real tensors."""


def propagate_meta(gm: fx.GraphModule, example_inputs: Any) -> None:
    """Record every node's value summary (shape and dtype for tensors) from a run on the meta
    device, as :func:`surgery.capture.fx.propagate` does from a real one."""
    args = placeholder_args(gm.graph, example_inputs)
    with on_meta(gm), evaluating(gm), torch.no_grad():
        try:
            _MetaRecorder(gm).run(*[_meta(a) for a in args])
        except Exception as err:  # a value read (.item(), a branch on data) or wrong inputs: run for real
            raise NeedsValues(str(err).split("\n")[0]) from err


def run_meta(model: nn.Module, example_inputs: Any, graph: fx.Graph | None = None) -> Any:
    """The model's outputs, as meta tensors (shapes and dtypes, no values), from a run on the
    meta device: through ``graph`` (one traced from the model before an edit that kept its
    structure: no new trace) or its own fx graph, with the shape formulas, else its own
    forward. :class:`NeedsValues` when it reads values."""
    if graph is None:
        try:
            graph = symbolic_trace(model).graph
        except Exception:
            graph = None
    with on_meta(model), evaluating(model), torch.no_grad():
        try:
            if graph is not None:  # run over the model itself: no GraphModule to build, no node.meta written
                runner = _MetaRecorder(model, graph=graph, record=False)
                return runner.run(*[_meta(a) for a in placeholder_args(graph, example_inputs)])
            args, kwargs = as_inputs(example_inputs)
            return model(*_meta(args), **_meta(kwargs))
        except Exception as err:
            raise NeedsValues(str(err).split("\n")[0]) from err


@contextlib.contextmanager
def on_meta(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` with meta stand-ins for its parameters and buffers inside the block (the real
    tensors stay where they are, untouched, and come back after it)."""
    state = {name: _meta(t) for name, t in list(module.named_parameters()) + list(module.named_buffers())}
    with _reparametrize_module(module, state, tie_weights=True):
        yield module


def _meta(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value if value.is_meta else torch.empty_like(value, device="meta")
    if isinstance(value, (list, tuple)):
        return type(value)(_meta(v) for v in value)
    if isinstance(value, dict):
        return {k: _meta(v) for k, v in value.items()}
    return value


class _MetaRecorder(Recorder):
    """Layers whose output shape is a formula of their input's are not run."""

    def call_module(self, target: str, args: tuple, kwargs: dict) -> Any:
        module = self.fetch_attr(target)
        x = args[0] if args else None
        if isinstance(x, torch.Tensor) and len(args) == 1 and not kwargs:
            if type(module) in SAME_SHAPE_TYPES:
                return x
            if type(module) is nn.Linear and x.shape[-1] == module.in_features:
                return x.new_empty((*x.shape[:-1], module.out_features))
            if type(module) in (nn.Conv1d, nn.Conv2d, nn.Conv3d) and isinstance(module.padding, tuple) \
                    and x.dim() == module.weight.dim() and x.shape[1] == module.in_channels:
                return x.new_empty((x.shape[0], module.out_channels, *_conv_sizes(module, x.shape[2:])))
        return super().call_module(target, args, kwargs)


SAME_SHAPE_TYPES = frozenset(t for t in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
                                         nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d) + SAME_SHAPE[1:])


def _conv_sizes(conv: nn.Module, sizes: torch.Size) -> list:
    return [(s + 2 * p - d * (k - 1) - 1) // st + 1
            for s, p, d, k, st in zip(sizes, conv.padding, conv.dilation, conv.kernel_size, conv.stride)]
