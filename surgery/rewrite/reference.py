"""The masked reference: the original model with the removed units ignored, and its outputs.

Verification compares the pruned model with a copy of the original in which every layer
ignores the removed channels (:meth:`surgery.extend.Handler.mask`: zeroed input columns
of convs and linears, zeroed rows of raw parameters). :func:`run_reference` builds what
the comparison needs from that copy (its outputs in eval mode and, when the model's code
reads ``self.training``, in train mode) *before* the rewrite, so the copy is freed before
the pruned model exists: the reference and the pruned model are never in memory together.

Example:
    >>> import torch, torch.nn as nn
    >>> from surgery import trace
    >>> net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    >>> graph = trace(net, torch.randn(2, 4))
    >>> ref = masked_reference(net, graph, graph.groups[0].units[:1], torch.float64)
    >>> ref[2].weight.dtype, int((ref[2].weight[:, 0] == 0).sum())
    (torch.float64, 2)
"""
from __future__ import annotations

import copy
import gc
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import torch.utils._pytree as pytree

from surgery.core.inputs import as_inputs, check_not_empty, flat_tensors, run_eval, tensor_at
from surgery.groups.graph import ChannelGraph, Kind
from surgery.ops.registry import handler_for
from surgery.rewrite.rebuild import keep_indices
from surgery.rewrite.train_check import branches_on_training, train_forward

__all__ = ["masked_reference", "reference_dtype", "run_reference", "reference_outputs", "ReferenceRun",
           "FLOAT64_LIMIT"]

FLOAT64_LIMIT = 2 * 1024 ** 3  # bytes of float64 weights for the reference and the pruned copy together
COLLECT_ABOVE = 64 * 1024 ** 2  # bytes: a reference this large that a reference cycle keeps is collected at once


@dataclass
class ReferenceRun:
    """What the masked reference computed on the example inputs: ``outputs`` (flat, eval
    mode) on ``inputs`` (cast to ``dtype``); ``train``: its train-mode outputs when the
    model's code reads ``self.training`` (None when it does not; a string says why train
    mode could not be run); ``model_type``: the reference's class; ``non_finite``: names of
    its parameters and buffers that hold NaN or inf."""
    dtype: torch.dtype
    inputs: Any
    outputs: list
    model_type: type
    train: list | str | None = None
    non_finite: list | None = None


def masked_reference(model: nn.Module, graph: ChannelGraph, removed: np.ndarray,
                     dtype: torch.dtype | None = None) -> nn.Module:
    """A copy of ``model`` (in ``dtype``) whose layers ignore the ``removed`` units."""
    ref = copy.deepcopy(model, _cast_memo(model, dtype) if dtype is not None else None)
    kinds = {(s.name, s.role): s.kind for s in graph.slots}
    by_layer: dict = {}
    for (name, role), keep in keep_indices(graph, removed).items():
        if kinds[(name, role)] == Kind.PARAM:
            _zero_param(ref, name, role.dim, keep)
        else:
            by_layer.setdefault(name, {})[str(role)] = keep
    for name, roles in by_layer.items():
        module = ref.get_submodule(name)
        handler_for(module).mask(module, roles.get("in"), roles.get("out"))
    return ref


def _cast_memo(model: nn.Module, dtype: torch.dtype) -> dict:
    """A deepcopy memo that copies every floating parameter and buffer straight into ``dtype``
    (no copy in the model's own dtype first: a float64 reference of a float32 model costs 2x
    its weights, not 3x); tensors shared by several modules stay shared."""
    memo: dict = {}
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) in memo or not t.is_floating_point():
            continue
        data = t.detach().to(dtype, copy=True)
        memo[id(t)] = nn.Parameter(data, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else data
    return memo


def _zero_param(root: nn.Module, name: str, dim: int, keep: np.ndarray) -> None:
    t = tensor_at(root, name)
    gone = torch.ones(t.shape[dim], dtype=torch.bool)
    gone[torch.as_tensor(keep, dtype=torch.long)] = False
    with torch.no_grad():
        t.index_fill_(dim, torch.nonzero(gone).flatten().to(t.device), 0)


def reference_dtype(model: nn.Module) -> torch.dtype:
    """float64 when two float64 copies of the weights fit in FLOAT64_LIMIT, else the model's."""
    n = sum(t.numel() for t in list(model.parameters()) + list(model.buffers()) if t.is_floating_point())
    if 2 * 8 * n <= FLOAT64_LIMIT:
        return torch.float64
    first = next((p for p in model.parameters() if p.is_floating_point()), None)
    return first.dtype if first is not None else torch.float32


def reference_outputs(model: nn.Module, graph: ChannelGraph, removed: np.ndarray,
                      example_inputs: Any) -> ReferenceRun:
    """Build the masked reference of ``model``, run it (:func:`run_reference`) and free it.
    torch.fx's tracer leaves reference cycles (closures over itself) that hold the model it
    traced; a reference of ``COLLECT_ABOVE`` bytes or more that they keep is collected here,
    so that it is not in memory together with the pruned model. Whether the model branches on
    ``self.training`` is asked of ``model`` (the same code), so the reference is never traced
    and is freed by reference counting alone."""
    branches = branches_on_training(model, example_inputs, fx_graph(graph))
    reference = masked_reference(model, graph, removed, reference_dtype(model))
    size = sum(t.numel() * t.element_size() for t in list(reference.parameters()) + list(reference.buffers()))
    alive = weakref.ref(reference)
    ran = run_reference(reference, graph, example_inputs, branches)
    del reference
    if alive() is not None and size >= COLLECT_ABOVE:
        gc.collect()
    return ran


def run_reference(reference: nn.Module, graph: ChannelGraph, example_inputs: Any,
                  branches: bool | None = None) -> ReferenceRun:
    """Run the masked ``reference`` on the example inputs (cast to its dtype), in eval mode
    and, when its code reads ``self.training`` (``branches``; None: find out), in train mode
    too (see :mod:`train_check`)."""
    check_not_empty(example_inputs)
    dtype = next((p.dtype for p in reference.parameters() if p.is_floating_point()), torch.float32)
    inputs = cast_inputs(example_inputs, dtype)
    outputs = flat_tensors(run_eval(reference, inputs))
    train = None
    if branches is None:
        branches = branches_on_training(reference, inputs, fx_graph(graph))
    if branches:
        try:
            with train_forward(reference) as run:
                train = flat_tensors(run(inputs))
        except Exception as err:
            train = (f"train mode not checked (the original fails in train mode on the example inputs: "
                     f"{type(err).__name__})")
    finite = all(bool(torch.isfinite(o).all()) for o in outputs if o.is_floating_point())
    return ReferenceRun(dtype, inputs, outputs, type(reference), train, [] if finite else non_finite(reference))


def non_finite(model: nn.Module) -> list:
    """Names of the floating parameters and buffers of ``model`` that hold NaN or inf."""
    return [name for name, t in list(model.named_parameters()) + list(model.named_buffers())
            if t.is_floating_point() and not bool(torch.isfinite(t.sum())) and not bool(torch.isfinite(t).all())]


def cast_inputs(example_inputs: Any, dtype: torch.dtype) -> Any:
    """The example inputs with their floating tensors in ``dtype``, inside lists, tuples and
    dicts too (a detector's list of images)."""
    cast = (lambda t: t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t)
    args, kwargs = as_inputs(example_inputs)
    return pytree.tree_map(cast, dict(kwargs)) if kwargs else tuple(pytree.tree_map(cast, list(args)))


def fx_graph(graph: ChannelGraph) -> fx.Graph | None:
    """The traced fx graph, when it is one (the export front's is another kind of graph)."""
    return graph.gm.graph if graph.front == "fx" else None
