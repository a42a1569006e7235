"""What a set of nodes of a traced graph reaches: which of the model's outputs, which layers.

Verification uses it to compare exactly every output that no inexact normalisation feeds,
instead of giving up on the whole model when one LayerNorm sees removed channels.

Example:
    >>> import torch, torch.nn as nn, torch.fx as fx
    >>> class Two(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.a, self.b, self.norm = nn.Linear(4, 4), nn.Linear(4, 4), nn.LayerNorm(4)
    ...     def forward(self, x):
    ...         return self.a(x), self.norm(self.b(x))
    >>> gm = fx.symbolic_trace(Two())
    >>> reached_outputs(gm, {"norm"}, lambda n: 1)
    [False, True]
"""
from __future__ import annotations

import operator
from typing import Callable

import numpy as np
import torch
import torch.fx as fx

from surgery.ops.context import AXES_KEY, iter_vars

__all__ = ["downstream", "reached_outputs", "flat_output_nodes", "crossed", "consumed_without_layer"]

# ops that hand some channels to one output and the rest to another: nothing is consumed
_SELECTIONS = {operator.getitem, torch.split, torch.chunk, torch.narrow, torch.unbind, torch.tensor_split,
               "split", "chunk", "narrow", "unbind", "tensor_split", "split_with_sizes", "__getitem__"}


def consumed_without_layer(graph, removed: np.ndarray, masked: Callable[[str], bool]) -> set:
    """Names of the nodes where removed channels are consumed by something other than a masked
    layer (``masked(module name)``): an input holds them and the output does not (``q @ k``
    over pruned head dims, a sum over channels). The masked reference zeroes those channels
    where a layer makes them, so what such a node computes differs from the pruned model's
    wherever something between re-adds a value (a BatchNorm shift): tensors after it are
    equal only where the model itself cancels the difference (a softmax over a shift)."""
    gone = graph.removed_mask(removed)
    sinks = set()
    for node in graph.gm.graph.nodes:
        if node.op not in ("call_function", "call_method", "call_module") or node.target in _SELECTIONS:
            continue
        if node.op == "call_module" and masked(node.target):
            continue
        into = set()
        for arg in node.all_input_nodes:
            into |= _removed_roots(graph, gone, arg.meta.get(AXES_KEY))
        if into and into - _removed_roots(graph, gone, node.meta.get(AXES_KEY)):
            sinks.add(node.name)
    return sinks


def _removed_roots(graph, gone: np.ndarray, axes) -> set:
    roots = set()
    for vars_ in iter_vars(axes):
        r = graph.roots[np.asarray(vars_, dtype=np.int64)]
        roots.update(r[gone[r]].tolist())
    return roots


def crossed(graph, removed: np.ndarray) -> list:
    """``[(description, node name)]`` of each normalisation over channels in ``graph`` (a
    :class:`surgery.groups.graph.ChannelGraph`) that sees removed channels."""
    gone = graph.removed_mask(removed)
    return [(what, node) for what, vars_, node in graph.norms if gone[graph.roots[vars_]].any()]


def downstream(gm: fx.GraphModule, sources: set) -> set:
    """Names of the nodes that depend on any node named in ``sources`` (themselves included)."""
    reached: set = set()
    for node in gm.graph.nodes:  # topological order: a node's inputs come before it
        if node.name in sources or any(a.name in reached for a in node.all_input_nodes):
            reached.add(node.name)
    return reached


def flat_output_nodes(gm: fx.GraphModule, tensors_of: Callable[[fx.Node], int]) -> list:
    """The node behind each tensor of the model's flattened output (the order of
    :func:`surgery.core.inputs.flat_tensors`); ``tensors_of(node)`` is how many tensors a node yields."""
    out = next(n for n in gm.graph.nodes if n.op == "output")
    flat: list = []

    def walk(arg) -> None:
        if isinstance(arg, fx.Node):
            flat.extend([arg] * tensors_of(arg))
        elif isinstance(arg, dict):
            for v in arg.values():
                walk(v)
        elif isinstance(arg, (list, tuple)):
            for v in arg:
                walk(v)

    walk(out.args[0])
    return flat


def reached_outputs(gm: fx.GraphModule, sources: set, tensors_of: Callable[[fx.Node], int]) -> list:
    """For each tensor of the flattened output, whether it depends on a node in ``sources``."""
    reached = downstream(gm, sources)
    return [n.name in reached for n in flat_output_nodes(gm, tensors_of)]
