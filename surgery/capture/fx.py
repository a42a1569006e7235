"""The torch.fx front end: symbolic tracing and one forward for shapes.

``symbolic_trace`` turns a model into a GraphModule, treating every module that has a
channel rule (Conv, BatchNorm, Linear, ... and user-registered types) as a leaf, and
explaining untraceable code (module, file, line, fix). ``propagate`` runs the graph
once (eval mode, no grad, the user's model left exactly as it was) and stores each
node's value summary (a ``TensorMeta`` for tensors) in ``node.meta["surgery.value"]``.
"""
from __future__ import annotations

from typing import Any, Iterable

import torch
import torch.fx as fx
import torch.nn as nn

from surgery.core.transaction import untouched
from surgery.core.errors import ArgumentError, ArgumentTypeError, ShapeError, TraceError
from surgery.core.frames import user_frame
from surgery.core.inputs import as_inputs, evaluating
from surgery.ops.context import VALUE_KEY, TensorMeta
from surgery.ops.registry import leaf_functions, rule_for

__all__ = ["symbolic_trace", "unlinked", "propagate", "placeholder_args", "Recorder", "leaf_paths", "owning_module", "width_owners"]


class _Tracer(fx.Tracer):
    def __init__(self, leaf_types: tuple, leaf_names: set) -> None:
        super().__init__(autowrap_functions=leaf_functions())
        self.proxy_buffer_attributes = True  # buffers read in forward become get_attr nodes, not constants
        self._leaf_types, self._leaf_names = leaf_types, leaf_names
        self.module_path: list[tuple[str, str]] = []

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, self._leaf_types) or qualname in self._leaf_names:
            return True
        if rule_for(m) is not None and not isinstance(m, (nn.Sequential, nn.ModuleList)):
            return True
        return super().is_leaf_module(m, qualname)

    def call_module(self, m, forward, args, kwargs):
        self.module_path.append((self.path_of_module(m), type(m).__name__))
        out = super().call_module(m, forward, args, kwargs)  # on failure the path stays for the message
        self.module_path.pop()
        return out


def _split_leaves(leaf_modules: Iterable, model: nn.Module) -> tuple[tuple, set]:
    types, names = [], set()
    by_id = {id(m): n for n, m in model.named_modules()}
    for leaf in leaf_modules:
        if isinstance(leaf, type) and issubclass(leaf, nn.Module):
            types.append(leaf)
        elif isinstance(leaf, str):
            names.add(leaf)
        elif isinstance(leaf, nn.Module) and id(leaf) in by_id:
            names.add(by_id[id(leaf)])
        else:
            raise ArgumentTypeError(f"leaf_modules entries must be module types, module names or "
                            f"submodules of the model; got {leaf!r}")
    return tuple(types), names


def leaf_paths(leaf_modules: Iterable, model: nn.Module) -> set:
    """Names of the submodules ``leaf_modules`` designates (by type, name or instance)."""
    types, names = _split_leaves(leaf_modules, model)
    unknown = sorted(n for n in names if n not in dict(model.named_modules()))
    if unknown:
        raise ArgumentError(f"leaf_modules names {unknown} that are not submodules of {type(model).__name__}")
    return names | {n for n, m in model.named_modules() if n and types and isinstance(m, types)}


def symbolic_trace(model: nn.Module, leaf_modules: Iterable = ()) -> fx.GraphModule:
    """Trace ``model`` with torch.fx; raise :class:`TraceError` with a fix on failure.
    Attributes the forward assigns while traced (proxies) are undone."""
    if not isinstance(model, nn.Module):
        raise ArgumentTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    tracer = _Tracer(*_split_leaves(leaf_modules, model))
    with untouched(model):  # the GraphModule is built before the model is restored: constants the
        try:                # trace read from the model's containers (_tensor_constant0) are still there
            graph = tracer.trace(model)
        except Exception as err:  # fx raises TraceError, TypeError, RuntimeError, ...
            raise TraceError(_explain(model, tracer, err)) from err
        return _graph_module(tracer.root, graph, type(model).__name__)


def unlinked(gm: fx.GraphModule) -> fx.Graph:
    """``gm``'s graph with its back reference to ``gm`` cut. torch.fx links a GraphModule and its
    graph both ways, so a dropped GraphModule is cyclic garbage that keeps the layers it
    references (the replaced weights after an in-place rewrite) until Python's next full
    collection; unlinked, it is freed as soon as it is dropped. For a graph that is only read
    (compared, propagated over another root) or a GraphModule that is done with.

    Example:
        >>> import gc, weakref, torch.nn as nn
        >>> gm = symbolic_trace(nn.Sequential(nn.Linear(2, 2)))
        >>> graph, alive, flag = unlinked(gm), weakref.ref(gm), gc.isenabled()
        >>> gc.disable(); del gm; gone = alive() is None; _ = flag and gc.enable()
        >>> gone, graph.owning_module
        (True, None)
    """
    graph = gm.graph
    graph.owning_module = None
    return graph


def _graph_module(root: nn.Module, graph: fx.Graph, name: str) -> fx.GraphModule:
    """A GraphModule whose Python code is generated when first needed (its forward, ``.code``):
    the analysis reads the graph only. A plain GraphModule where torch has no lazy one."""
    try:
        from torch.fx._lazy_graph_module import _LazyGraphModule
    except ImportError:  # pragma: no cover - torch < 2.3
        return fx.GraphModule(root, graph, name)
    return _LazyGraphModule(root, graph, name)


def _explain(model: nn.Module, tracer: _Tracer, err: Exception) -> str:
    path, kind = tracer.module_path[-1] if tracer.module_path else ("", type(model).__name__)
    where = user_frame(err)
    where_txt = f" at {where}" if where else ""
    module_txt = f"submodule '{path}' ({kind})" if path else f"the model's own forward ({kind})"
    return (
        f"torch.fx cannot trace {module_txt}{where_txt}: {type(err).__name__}: {err}\n"
        f"Fix: pass leaf_modules=[{kind}] (or the name '{path or kind}') so this module is "
        f"treated as a black box (its channels are then frozen unless you register a rule "
        f"with surgery.extend.register_layer({kind}, rule=...)), or remove the data-dependent control "
        f"flow from its forward."
    )


def _summary(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return TensorMeta(value.shape, value.dtype)
    if isinstance(value, (list, tuple)) and not isinstance(value, torch.Size):
        return [_summary(v) for v in value]
    if value is None or isinstance(value, (int, float, bool, str, torch.Size, torch.dtype, torch.device)):
        return value
    return _Opaque(type(value).__name__)


class _Opaque:
    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __repr__(self) -> str:
        return f"<{self.kind}>"


class _NodeFailure(Exception):
    """Carries a clean message past fx's own decoration of errors (fx edits ``args``)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Recorder(fx.Interpreter):
    """Runs the graph and stores each node's value summary in ``node.meta``; a failing node
    raises :class:`ShapeError` naming it and the input shapes."""

    def __init__(self, module: nn.Module, *, graph: fx.Graph | None = None, record: bool = True) -> None:
        super().__init__(module, graph=graph)
        self.record = record  # False: run only, leave node.meta as it is

    def run(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().run(*args, **kwargs)
        except _NodeFailure as err:
            raise ShapeError(err.message) from err.__cause__

    def run_node(self, n: fx.Node) -> Any:
        try:
            result = super().run_node(n)
        except Exception as err:
            try:
                shapes = [tuple(a.shape) for a in self.args_of(n) if isinstance(a, torch.Tensor)]
            except Exception:  # values already freed: report the error without shapes
                shapes = "unknown"
            raise _NodeFailure(
                f"running node '{n.name}' ({n.op} {getattr(n.target, '__name__', n.target)}) "
                f"on the example inputs failed with input shapes {shapes}: {err}\n"
                "Fix: pass example_inputs with the shapes, dtypes and device that the "
                "model's forward expects (e.g. torch.randn(1, 3, 224, 224)).") from err
        if self.record:
            n.meta[VALUE_KEY] = _summary(result)
        return result

    def args_of(self, n: fx.Node) -> list:
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        return list(args) + list(kwargs.values())


def placeholder_args(graph: fx.Graph, example_inputs: Any) -> tuple:
    """The example inputs as the graph's positional placeholders (defaults filled in)."""
    args, kwargs = as_inputs(example_inputs)
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    if kwargs:
        unknown = sorted(set(kwargs) - {p.target for p in placeholders})
        if unknown:
            raise ArgumentError(f"example_inputs has keys {unknown} that the model's forward does not take; "
                             f"its inputs are {[p.target for p in placeholders]}")
        return tuple(kwargs.get(p.target, p.args[0] if p.args else None) for p in placeholders)
    if len(args) < len(placeholders):
        args = args + tuple(p.args[0] if p.args else None for p in placeholders[len(args):])
    return args


def propagate(gm: fx.GraphModule, example_inputs: Any) -> None:
    """Run ``gm`` once on the inputs (real tensors) and record value summaries; restores train/eval."""
    args = placeholder_args(gm.graph, example_inputs)
    with evaluating(gm), torch.no_grad():
        Recorder(gm).run(*args)


def owning_module(node: fx.Node | None) -> str | None:
    """The qualified name of the innermost module whose forward holds ``node`` (from the
    front end's ``nn_module_stack``; "" for the root), or None when it is not recorded."""
    stack = node.meta.get("nn_module_stack") if node is not None else None
    return list(stack.values())[-1][0] if stack else None


def width_owners(node: fx.Node) -> list:
    """The modules whose forward handles ``node``'s output: its owning module and, when that is
    one of torch.nn's layers, the module that called the layer too (so a block whose forward
    only chains submodules still sees the widths they produce)."""
    stack = list((node.meta.get("nn_module_stack") or {}).values())
    if not stack:
        return [""]
    owners = [stack[-1][0]]
    kind = stack[-1][1]
    kind = kind if isinstance(kind, str) else f"{getattr(kind, '__module__', '')}.{getattr(kind, '__qualname__', '')}"
    if kind.startswith("torch.nn."):
        owners.append(stack[-2][0] if len(stack) > 1 else "")
    return owners
