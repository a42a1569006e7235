"""The run front end: the ops one forward on the example inputs actually executes, as a graph.

torch.fx and torch.export both need one graph for the whole forward, and detectors branch
on data (anchor counts, proposals, NMS, per-image loops). :func:`run_graph` instead runs the
model once, for real, on the example inputs and records every aten op it executes
(``make_fx`` with real tensors, so each ``if`` on a value takes the branch the inputs take)
with the module stack of each op. That graph is read like an exported one
(:mod:`surgery.capture.export`): the layers with a channel rule become ``call_module`` nodes,
parameters are named as in ``state_dict()``, and ops no rule knows (``torchvision::nms``,
``topk`` on scores) freeze only the channels that reach them. The rewrite is module-level, so
the pruned model keeps its class: a ``FasterRCNN`` stays a ``FasterRCNN``.

What it cannot see: a branch the example inputs do not take. Layers that did not run are
named in a warning; their channels are not analysed. Verification runs the same inputs,
so it checks the path that was recorded; a layer that only another branch reads, and
that reads pruned channels, fails loudly with a shape error when that branch runs (a
layer that reduces over channels without a weight, such as a sum, would not: give
example inputs that take every branch).

Example:
    >>> import torch
    >>> gm = run_graph(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1)), torch.randn(1, 3, 8, 8))
    >>> [n.op for n in gm.graph.nodes]
    ['placeholder', 'call_module', 'output']
"""
from __future__ import annotations

import warnings
from types import SimpleNamespace
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.utils._pytree as pytree

from surgery.capture.export import rebuilt
from surgery.core.errors import TraceError
from surgery.core.frames import user_stacklevel
from surgery.core.inputs import as_inputs, evaluating, flat_tensors
from surgery.core.transaction import untouched

__all__ = ["run_graph"]


def run_graph(model: nn.Module, example_inputs: Any, leaf_paths: set = frozenset()) -> fx.GraphModule:
    """Record one eval-mode forward of ``model`` on the example inputs (no grad) and return
    the analysable graph; the submodules named in ``leaf_paths`` become black boxes."""
    from torch.fx.experimental.proxy_tensor import make_fx
    args, kwargs = as_inputs(example_inputs)
    flat, spec = pytree.tree_flatten((tuple(args), dict(kwargs)))

    def forward(*leaves):
        a, k = pytree.tree_unflatten(list(leaves), spec)
        return tuple(flat_tensors(model(*a, **k)))
    forward._orig_mod = model  # make_fx records the module stack of a function that names its module so
    try:
        with untouched(model), evaluating(model), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gm = make_fx(forward, tracing_mode="real", pre_dispatch=True, record_module_stack=True,
                         _error_on_data_dependent_ops=False)(*flat)  # .item(): the value of this run
    except Exception as err:
        raise TraceError(f"recording a forward of {type(model).__name__} on the example inputs failed: "
                         f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}. The model must "
                         f"run on the example inputs in eval mode") from err
    _warn_not_run(model, gm)
    program = SimpleNamespace(graph_module=gm, constants={},
                              graph_signature=SimpleNamespace(inputs_to_parameters={}, inputs_to_buffers={}))
    return rebuilt(model, program, leaf_paths)


def _warn_not_run(model: nn.Module, gm: fx.GraphModule) -> None:
    """Name the layers with weights that the recorded forward never entered."""
    ran = {path for n in gm.graph.nodes for path, _ in (n.meta.get("nn_module_stack") or {}).values()}
    idle = [name for name, m in model.named_modules()
            if name and name not in ran and any(True for _ in m.parameters(recurse=False))]
    if idle:
        warnings.warn(f"{len(idle)} layers with weights did not run on the example inputs ({', '.join(idle[:3])}"
                      f"{', ...' if len(idle) > 3 else ''}): the recorded forward cannot say which channels they "
                      f"read. Give example inputs that run them, or keep them with ignored_layers",
                      stacklevel=user_stacklevel())
