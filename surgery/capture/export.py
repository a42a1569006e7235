"""The ``torch.export`` front end: model + example inputs -> an aten-level fx graph that the
channel rules read, with parameters and layers mapped back to the user's modules.

``torch.export.export(model, args, kwargs, strict=False)`` captures models that
``torch.fx.symbolic_trace`` cannot (data-dependent Python, Hugging Face transformers).
Its graph lifts parameters to inputs; :func:`export_graph` turns them back into
``get_attr`` nodes named as in ``model.state_dict()``, collapses every call of a layer that
has a channel rule (Linear, Conv, Embedding, norms, ...) into one ``call_module`` node
(found through the export's ``nn_module_stack``), and records each node's shape from the
export's fake tensors, so the analysis needs no real forward. The rewrite then slices
the user's own modules: the pruned model keeps its class and methods.
"""
from __future__ import annotations

import contextlib
import io
import operator
import warnings
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from surgery.core.inputs import as_inputs, evaluating, flat_tensors
from surgery.ops.context import CONSTANT_KEY, VALUE_KEY, TensorMeta
from surgery.ops.registry import rule_for
from surgery.core.transaction import untouched
from surgery.core.errors import ExportError

__all__ = ["export_graph", "rebuilt"]

_PREFIX = "m."



class _Outputs(nn.Module):
    """Calls the model and returns the tensors of its output (caches and other objects that
    are not tensors are dropped: they are not channels and torch.export cannot return them)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.m = model

    def forward(self, *args, **kwargs):
        return tuple(flat_tensors(self.m(*args, **kwargs)))


def export_graph(model: nn.Module, example_inputs: Any, leaf_paths: set = frozenset()) -> fx.GraphModule:
    """``torch.export`` the model (eval mode, no grad) and return the analysable graph; the
    submodules named in ``leaf_paths`` become black boxes (one ``call_module`` node each).
    Whatever the forward assigns to the model's attributes while being exported (fake tensors)
    is undone."""
    args, kwargs = as_inputs(example_inputs)
    kwargs = dict(kwargs)
    if "use_cache" in _parameters(model) and "use_cache" not in kwargs:
        kwargs["use_cache"] = False  # a key/value cache is state, not a channel: leave it out
    try:  # torch's export logs (a graph dump per data-dependent failure) go to stderr: kept quiet
        with untouched(model), evaluating(model), torch.no_grad(), warnings.catch_warnings(), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.export.export(_Outputs(model), tuple(args), kwargs, strict=False)
    except Exception as err:
        raise ExportError(f"torch.export could not capture {type(model).__name__}: {type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else ''}\nFix: make the forward exportable "
                          f"(see torch.export's message above), or trace with tracer='fx' and leaf_modules="
                          f"[...] for the parts fx cannot trace.") from err
    return rebuilt(model, program, leaf_paths)


def _parameters(model: nn.Module) -> set:
    import inspect
    try:
        return set(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return set()


def rebuilt(model: nn.Module, program, leaf_paths: set = frozenset()) -> fx.GraphModule:
    """The analysable graph of ``program`` (an ``ExportedProgram``, or anything with its
    ``graph_module``, ``graph_signature`` and ``constants``): lifted inputs and ``get_attr``
    nodes that read the model's own tensors become ``get_attr`` nodes under their
    ``state_dict()`` names; layers with a rule and the ``leaf_paths`` collapse."""
    sig = program.graph_signature
    lifted = {**sig.inputs_to_parameters, **sig.inputs_to_buffers,
              **getattr(sig, "inputs_to_lifted_tensor_constants", {})}
    state = dict(model.named_parameters(remove_duplicate=False))
    state.update(model.named_buffers(remove_duplicate=False))
    attrs: dict = {}
    graph, env = fx.Graph(), {}
    names: dict = {}
    for name, t in state.items():
        names.setdefault(id(t), name)
    for node in program.graph_module.graph.nodes:
        if node.op == "placeholder" and node.name in lifted:
            env[node] = _lifted(graph, node, lifted[node.name], state, program, attrs)
        elif node.op == "get_attr":
            value = getattr(program.graph_module, node.target)
            target = names.get(id(value), node.target)  # the model's own tensor (make_fx's _param_constant)
            attrs[target] = value
            env[node] = graph.get_attr(target)
        else:
            env[node] = graph.node_copy(node, lambda n: env[n])
        env[node].meta = _meta(node.meta)
        if node.op == "get_attr" or (node.op == "placeholder" and node.name in lifted):
            env[node].meta[VALUE_KEY] = _summary(_value_of(attrs, env[node].target, node))
            if env[node].target not in state and node.op == "get_attr":
                env[node].meta[CONSTANT_KEY] = True  # made by the forward (recorded runs): cannot be sliced
    _collapse_leaves(graph, model, attrs, leaf_paths)
    _collapse_layers(graph, model, attrs)
    for node in [n for n in graph.nodes if n.op == "get_attr" and not n.users]:
        graph.erase_node(node)  # a collapsed layer's own weights, unused buffers
        attrs.pop(node.target, None)
    attrs.update({n.target: model.get_submodule(n.target) for n in graph.nodes if n.op == "call_module"})
    return fx.GraphModule(attrs, graph, type(model).__name__ + "Exported")


def _lifted(graph: fx.Graph, node: fx.Node, name: str, state: dict, program, attrs: dict) -> fx.Node:
    """A lifted parameter/buffer/constant becomes ``get_attr`` under its state-dict name."""
    name = name[len(_PREFIX):] if name.startswith(_PREFIX) else name
    if name in state:
        attrs[name] = state[name]
    else:  # a tensor constant created in forward
        name = "_constant_" + name.replace(".", "_")
        attrs[name] = program.constants.get(name, node.meta.get("val"))
        for key, value in program.constants.items():
            if key.replace(".", "_") == name[len("_constant_"):] or key.endswith(name[len("_constant_"):]):
                attrs[name] = value
    return graph.get_attr(name)


def _value_of(attrs: dict, target: str, node: fx.Node):
    value = attrs.get(target)
    return value if isinstance(value, torch.Tensor) else node.meta.get("val")


def _meta(meta: dict) -> dict:
    out = {}
    if "val" in meta:
        out[VALUE_KEY] = _summary(meta["val"])
    stack = meta.get("nn_module_stack")
    if stack:
        out["nn_module_stack"] = {k: (_strip(path), kind) for k, (path, kind) in stack.items()}
    return out


def _strip(path: str) -> str:
    path = path.replace("L['self'].", "").replace("L__self__.", "")
    return path[len(_PREFIX):] if path.startswith(_PREFIX) else ("" if path == "m" else path)


def _summary(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return TensorMeta(torch.Size(int(s) for s in value.shape), value.dtype)
    if isinstance(value, (list, tuple)):
        return [_summary(v) for v in value]
    if isinstance(value, torch.SymInt):
        return int(value)
    return value


# --------------------------------------------------------------------------- layers back
def _layer_of(node: fx.Node, model: nn.Module) -> str | None:
    """The outermost layer with a channel rule whose forward holds this node."""
    for path, _ in (node.meta.get("nn_module_stack") or {}).values():
        if not path:
            continue
        try:
            m = model.get_submodule(path)
        except AttributeError:
            return None
        if rule_for(m) is not None and not isinstance(m, (nn.Sequential, nn.ModuleList, nn.ModuleDict)):
            return path
    return None


def _collapse_layers(graph: fx.Graph, model: nn.Module, attrs: dict) -> None:
    """Each run of nodes inside one call of a rule-bearing layer becomes ``call_module``,
    when that call reads exactly one outside tensor and yields exactly one tensor."""
    runs, current = [], None
    for node in graph.nodes:
        path = _layer_of(node, model) if node.op == "call_function" else None
        if path is not None and current is not None and current[0] == path:
            current[1].append(node)
        else:
            current = (path, [node]) if path is not None else None
            if current is not None:
                runs.append(current)
    for path, nodes in runs:
        module = model.get_submodule(path)
        own = {id(t) for t in list(module.parameters()) + list(module.buffers())}
        _collapse(graph, path, nodes, lambda a: a.op == "get_attr" and id(attrs.get(a.target)) in own)


def _collapse(graph: fx.Graph, path: str, nodes: list, is_own) -> None:
    """``is_own(node)``: the node reads one of the layer's own tensors (under any name: a
    tied weight is lifted once, under one of its owners' names)."""
    inside = set(nodes)
    outer = []
    for n in nodes:
        for a in n.all_input_nodes:
            own = is_own(a)
            if a not in inside and not own and a not in outer:
                outer.append(a)
    results = [n for n in nodes if any(u not in inside for u in n.users)]
    if len(outer) != 1 or len(results) != 1 or not isinstance(results[0].meta.get(VALUE_KEY), TensorMeta):
        return
    with graph.inserting_before(results[0]):
        call = graph.call_module(path, (outer[0],))
    call.meta = dict(results[0].meta)
    results[0].replace_all_uses_with(call)
    for n in reversed(nodes):
        graph.erase_node(n)


# --------------------------------------------------------------------------- leaf modules
def _leaf_call(node: fx.Node, leaf_paths: set) -> tuple | None:
    """(path, call key) of the outermost leaf module whose forward holds this node."""
    for key, (path, _) in (node.meta.get("nn_module_stack") or {}).items():
        if path in leaf_paths:
            return path, key
    return None


def _collapse_leaves(graph: fx.Graph, model: nn.Module, attrs: dict, leaf_paths: set) -> None:
    """Each call of a leaf module becomes one ``call_module`` node that takes every tensor the
    call reads from outside and yields a tuple of what it gives back: no rule looks inside,
    so the channels at its border are frozen (unless its type has a channel rule)."""
    if not leaf_paths:
        return
    runs, current = [], None
    for node in graph.nodes:
        call = _leaf_call(node, leaf_paths) if node.op == "call_function" else None
        if call is not None and current is not None and current[0] == call:
            current[1].append(node)
        else:
            current = (call, [node]) if call is not None else None
            if current is not None:
                runs.append(current)
    for (path, _), nodes in runs:
        module = model.get_submodule(path)
        own = {id(t) for t in list(module.parameters()) + list(module.buffers())}
        is_own = (lambda a, own=own: a.op == "get_attr" and id(attrs.get(a.target)) in own)
        if rule_for(module) is not None:
            _collapse(graph, path, nodes, is_own)
        else:
            _black_box(graph, path, nodes, is_own)


def _black_box(graph: fx.Graph, path: str, nodes: list, is_own) -> None:
    inside = set(nodes)
    outer = []
    for n in nodes:
        for a in n.all_input_nodes:
            if a not in inside and not is_own(a) and a not in outer:
                outer.append(a)
    results = [n for n in nodes if any(u not in inside for u in n.users)]
    with graph.inserting_after(nodes[-1]):
        call = graph.call_module(path, tuple(outer))
    call.meta = {k: v for k, v in nodes[-1].meta.items() if k == "nn_module_stack"}
    call.meta[VALUE_KEY] = [r.meta.get(VALUE_KEY) for r in results]
    anchor = call
    for i, r in enumerate(results):
        with graph.inserting_after(anchor):
            item = graph.call_function(operator.getitem, (call, i))
        item.meta = dict(r.meta)
        r.replace_all_uses_with(item)
        anchor = item
    for n in reversed(nodes):
        graph.erase_node(n)
