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
import contextvars
import operator
from typing import Any, Iterator

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.stateless import _reparametrize_module

from surgery.capture.fx import Recorder, placeholder_args, symbolic_trace, unlinked
from surgery.core.inputs import as_inputs, evaluating

__all__ = ["propagate_meta", "run_meta", "NeedsValues", "on_meta", "SAME_SHAPE", "sharing_traces"]

SAME_SHAPE = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.ReLU, nn.ReLU6, nn.Hardtanh,
              nn.GELU, nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.LeakyReLU, nn.PReLU, nn.ELU,
              nn.Mish, nn.Softplus, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Identity)


class NeedsValues(Exception):
    """The graph reads a value the meta device does not have; run it on real tensors."""


def propagate_meta(gm: fx.GraphModule, example_inputs: Any) -> None:
    """Record every node's value summary (shape and dtype for tensors) from a run on the meta
    device, as :func:`surgery.capture.fx.propagate` does from a real one."""
    args = placeholder_args(gm.graph, example_inputs)
    with torch.no_grad():  # each tensor the graph reads becomes meta where it is read (_MetaRecorder)
        try:
            _MetaRecorder(gm).run(*[_meta(a) for a in args])
        except Exception as err:  # a value read (.item(), a branch on data) or wrong inputs: run for real
            raise NeedsValues(str(err).split("\n")[0]) from err


_TRACES: contextvars.ContextVar = contextvars.ContextVar("surgery_meta_traces", default=None)


@contextlib.contextmanager
def sharing_traces() -> Iterator[None]:
    """Inside the block, :func:`run_meta` traces each model (in each mode) once: for several
    shape checks of a model that the block no longer edits (a rewrite's class-or-graph choice,
    then the output-shape check)."""
    token = _TRACES.set({})
    try:
        yield
    finally:
        _TRACES.reset(token)


def _own_graph(model: nn.Module) -> fx.Graph | None:
    """The model's fx graph (None when fx cannot trace it), once per model and mode inside
    :func:`sharing_traces`."""
    shared = _TRACES.get()
    key = (id(model), model.training)
    if shared is not None and key in shared:
        return shared[key][1]
    try:
        graph = unlinked(symbolic_trace(model))
    except Exception:
        graph = None
    if shared is not None:
        shared[key] = (model, graph)  # the model is held, so its id is not reused meanwhile
    return graph


def run_meta(model: nn.Module, example_inputs: Any, graph: fx.Graph | None = None) -> Any:
    """The model's outputs, as meta tensors (shapes and dtypes, no values), from a run on the
    meta device: through ``graph`` (one traced from the model before an edit that kept its
    structure: no new trace) or its own fx graph, with the shape formulas, else its own
    forward. :class:`NeedsValues` when it reads values."""
    if graph is None:
        graph = _own_graph(model)
    try:
        if graph is not None:  # run over the model itself: no GraphModule to build, no node.meta written
            with torch.no_grad():
                runner = _MetaRecorder(model, graph=graph, record=False)
                return runner.run(*[_meta(a) for a in placeholder_args(graph, example_inputs)])
        args, kwargs = as_inputs(example_inputs)
        with on_meta(model), evaluating(model), torch.no_grad():
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
    """Runs a graph on meta tensors: every parameter, buffer or constant the graph reads is
    replaced by a meta stand-in where it is read (the model itself is never changed), and
    layers whose output shape is a formula of their input's are not run; other layers run in
    eval mode with meta stand-ins for their own tensors."""

    def get_attr(self, target: str, args: tuple, kwargs: dict) -> Any:
        return _meta(super().get_attr(target, args, kwargs))

    def call_function(self, target: Any, args: tuple, kwargs: dict) -> Any:
        if target in _BROADCASTING and len(args) == 2 and not kwargs:
            out = _broadcast(*args, inplace=target in _INPLACE)
            if out is not None:
                return out
        if target in _ADAPTIVE_AVG and args and not kwargs:
            out = _adaptive(args[0], args[1] if len(args) > 1 else None, _ADAPTIVE_AVG[target])
            if out is not None:
                return out
        return super().call_function(target, args, kwargs)

    def call_module(self, target: str, args: tuple, kwargs: dict) -> Any:
        module = self.fetch_attr(target)
        x = args[0] if args else None
        if isinstance(x, torch.Tensor) and len(args) == 1 and not kwargs:
            if type(module) in SAME_SHAPE_TYPES:
                return x
            if type(module) in _ADAPTIVE_AVG_MODULES:
                out = _adaptive(x, module.output_size, _ADAPTIVE_AVG_MODULES[type(module)])
                if out is not None:
                    return out
            if type(module) is nn.Linear and x.shape[-1] == module.in_features:
                return x.new_empty((*x.shape[:-1], module.out_features))
            if type(module) in (nn.Conv1d, nn.Conv2d, nn.Conv3d) and isinstance(module.padding, tuple) \
                    and x.dim() == module.weight.dim() and x.shape[1] == module.in_channels:
                return x.new_empty((x.shape[0], module.out_channels, *_conv_sizes(module, x.shape[2:])))
        with on_meta(module), evaluating(module):
            return super().call_module(target, args, kwargs)


_INPLACE = (operator.iadd, operator.isub, operator.imul, operator.itruediv)
_BROADCASTING = frozenset((operator.add, operator.sub, operator.mul, operator.truediv, torch.add, torch.sub, torch.mul,
                           torch.div) + _INPLACE)


def _broadcast(a: Any, b: Any, inplace: bool) -> torch.Tensor | None:
    """``a + b`` (and -, *, /) of meta tensors and Python numbers by the broadcasting rule,
    without torch's Python meta kernels; None for anything else (the op then runs)."""
    tensors = [t for t in (a, b) if isinstance(t, torch.Tensor)]
    if not tensors or not all(t.is_meta for t in tensors) or \
            not all(isinstance(v, (torch.Tensor, int, float, bool)) for v in (a, b)):
        return None
    shape = torch.broadcast_shapes(*(t.shape for t in tensors))
    if inplace:
        return a if isinstance(a, torch.Tensor) and a.shape == shape else None
    return torch.empty(shape, dtype=torch.result_type(a, b), device="meta")


_ADAPTIVE_AVG = {F.adaptive_avg_pool1d: 1, F.adaptive_avg_pool2d: 2, F.adaptive_avg_pool3d: 3}
_ADAPTIVE_AVG_MODULES = {nn.AdaptiveAvgPool1d: 1, nn.AdaptiveAvgPool2d: 2, nn.AdaptiveAvgPool3d: 3}


def _adaptive(x: Any, size: Any, k: int) -> torch.Tensor | None:
    """Adaptive average pooling to ``size`` over the last ``k`` dims (torch's meta kernel for
    it is a slow Python decomposition); None when the arguments are not the plain ones."""
    if not isinstance(x, torch.Tensor) or not x.is_meta or x.dim() < k + 1 or size is None:
        return None
    sizes = [size] * k if isinstance(size, int) else list(size)
    if len(sizes) != k or not all(s is None or (isinstance(s, int) and s > 0) for s in sizes):
        return None
    tail = [s if s is not None else n for s, n in zip(sizes, x.shape[-k:])]
    return x.new_empty((*x.shape[:-k], *tail))


SAME_SHAPE_TYPES = frozenset(t for t in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
                                         nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d) + SAME_SHAPE[1:])


def _conv_sizes(conv: nn.Module, sizes: torch.Size) -> list:
    return [(s + 2 * p - d * (k - 1) - 1) // st + 1
            for s, p, d, k, st in zip(sizes, conv.padding, conv.dilation, conv.kernel_size, conv.stride)]
