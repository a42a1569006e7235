"""``surgery.trace``: model + example inputs -> ChannelGraph (fx tracing, shapes, analysis, groups).

``symbolic_trace`` turns a model into a GraphModule, treating every module that has a
channel rule (Conv, BatchNorm, Linear, ... and user-registered types) as a leaf, and
explaining untraceable code (module, file, line, fix). ``propagate`` runs the graph
once (eval mode, no grad, the user's model left exactly as it was) and stores each
node's value summary (a ``TensorMeta`` for tensors) in ``node.meta["surgery.value"]``.
"""
from __future__ import annotations

import os
import traceback
import warnings
from typing import Any, Iterable

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.utils.parametrize  # noqa: F401  (check_model)
import torch.nn.utils.prune  # noqa: F401  (check_model)

from surgery.analysis import analyse
from surgery.exporting import ExportError, export_graph
from surgery.transaction import untouched
from surgery.groups import ChannelGraph, build_groups
from surgery.inputs import as_inputs, check_not_empty, evaluating, input_spec, layer_names
from surgery.rules.context import VALUE_KEY, RuleContext, TensorMeta
from surgery.rules.registry import LEAF_FUNCTIONS, module_rule_for
from surgery.ties import couple_shared_tensors

__all__ = ["trace", "TraceError", "ShapeError", "symbolic_trace", "propagate"]


def trace(model: nn.Module, example_inputs: Any, *, leaf_modules: Iterable = (),
          ignored_layers: Iterable = (), attention: str = "dims", tracer: str = "auto") -> ChannelGraph:
    """Trace ``model`` and compute its channel groups.

    Args:
        model: any ``nn.Module`` torch.fx can trace (see ``leaf_modules`` otherwise).
        example_inputs: a tensor, a tuple of inputs or a dict of keyword inputs.
        leaf_modules: module types, names or instances to treat as black boxes.
        ignored_layers: modules (or names) whose output channels must stay whole; a
            container (``model.layer1``) means every layer inside it.
        attention: ``"dims"`` (every head loses the same head dims; the head count stays)
            or ``"heads"`` (whole heads go: q/k/v rows, output-projection columns, and
            the head-count attributes follow).
        tracer: ``"fx"`` (torch.fx symbolic tracing, then one forward for shapes),
            ``"export"`` (``torch.export.export(strict=False)``: an aten-level graph with
            fake-tensor shapes; for models fx cannot trace, Hugging Face transformers
            among them) or ``"auto"`` (fx first, export when fx fails).

    Example:
        >>> import torch, torchvision, surgery
        >>> g = surgery.trace(torchvision.models.resnet18(), torch.randn(1, 3, 64, 64))
        >>> len(g.prunable_groups)
        12
    """
    check_model(model)
    check_not_empty(example_inputs)
    check_attention(attention)
    ignored = layer_names(model, ignored_layers, "ignored_layers")
    gm, front = _capture(model, example_inputs, leaf_modules, check_tracer(tracer))
    ctx = analyse(gm, attention)
    if front == "export":
        _tie_literals(ctx)
    couple_shared_tensors(ctx, gm)
    _freeze_ignored(ctx, ignored)
    groups, roots = build_groups(ctx)
    for g in groups:
        for m in g.members:
            m.type_name = "Parameter" if m.kind == "param" else type(gm.get_submodule(m.name)).__name__
    graph = ChannelGraph(gm, ctx, groups, roots)
    graph.front, graph.attention = front, attention
    graph.input_spec = input_spec(example_inputs)
    graph.example_inputs = example_inputs
    for w in ctx.warnings:
        warnings.warn(w, stacklevel=2)
    return graph


def _tie_literals(ctx: RuleContext) -> None:
    """Exported graphs hold the values of the user's attributes as literals; the user's
    forward runs unpatched, so reshape literals of one module that share a value (q, k and v
    views by ``self.head_dim``) are one attribute: they must change together."""
    by_value: dict = {}
    for p in ctx.patches:
        node = next((n for n in ctx.gm.graph.nodes if n.name == p.node), None)
        stack = (node.meta.get("nn_module_stack") or {}) if node is not None else {}
        owner = list(stack.values())[-1][0] if stack else None
        by_value.setdefault((owner, len(p.vars)), []).append(p.vars)
    for arrays in by_value.values():
        for a in arrays[1:]:
            ctx.vars.unify(arrays[0], a)


def check_tracer(tracer: Any) -> str:
    if tracer not in ("auto", "fx", "export"):
        raise ValueError(f"tracer must be 'auto' (fx, then torch.export if fx fails), 'fx' or 'export', got {tracer!r}")
    return tracer


def _capture(model: nn.Module, example_inputs: Any, leaf_modules: Iterable, tracer: str) -> tuple:
    """(graph with value summaries, "fx" or "export")."""
    if tracer != "export":
        try:
            gm = symbolic_trace(model, leaf_modules)
        except TraceError as err:
            if tracer == "fx":
                raise
            fx_error = err
        else:
            propagate(gm, example_inputs)
            return gm, "fx"
    try:
        return export_graph(model, example_inputs, _leaf_paths(leaf_modules, model)), "export"
    except ExportError as err:
        if tracer == "auto":
            raise TraceError(f"{fx_error}\n\ntorch.export failed too: {err}") from err
        raise


def check_attention(attention: Any) -> str:
    """``attention`` as given, or a ValueError naming the accepted values."""
    if attention not in ("dims", "heads"):
        raise ValueError(f"attention must be 'dims' (prune head dims, keep the head count) or 'heads' "
                         f"(remove whole heads), got {attention!r}")
    return attention


def check_model(model: nn.Module) -> None:
    """Refuse, with the fix, models the engine must not rewrite as they are."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if hasattr(model, "_orig_mod") and type(model).__name__ == "OptimizedModule":
        raise TypeError("this model is wrapped by torch.compile: pass model._orig_mod (the module it wraps), "
                        "then compile the pruned model again")
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        raise TypeError(f"this model is wrapped by {type(model).__name__}: pass model.module, then wrap the "
                        f"pruned model again")
    if isinstance(model, torch.jit.ScriptModule):
        raise TypeError("TorchScript modules cannot be traced by torch.fx: prune the Python module before "
                        "scripting it (torch.jit.script(pruned))")
    for name, m in model.named_modules():
        where = f"'{name}'" if name else "the model"
        if torch.nn.utils.parametrize.is_parametrized(m):
            raise ValueError(f"{where} ({type(m).__name__}) has parametrizations (weight_norm, spectral_norm, ...): "
                             f"remove them with torch.nn.utils.parametrize.remove_parametrizations(module, "
                             f"'weight') before pruning, and apply them again to the pruned model")
        for hook in m._forward_pre_hooks.values():
            if isinstance(hook, torch.nn.utils.prune.BasePruningMethod):
                raise ValueError(f"{where} still has pruning masks (surgery.sparsity.sparsify or "
                                 f"torch.nn.utils.prune): call surgery.sparsity.make_permanent(model) first")
            if type(hook).__name__ in ("WeightNorm", "SpectralNorm"):
                raise ValueError(f"{where} uses the old torch.nn.utils.{type(hook).__name__.lower()[:-4]}_norm hook: "
                                 f"remove it (torch.nn.utils.remove_{type(hook).__name__.lower()[:-4]}_norm) before pruning")


def _freeze_ignored(ctx: RuleContext, names: list) -> None:
    for (name, role), slot in ctx.slots.items():
        inside = any(n == "" or name == n or name.startswith(n + ".") for n in names)
        if role != "in" and inside:
            ctx.vars.freeze(slot.vars, f"'{name}' is in ignored_layers")


class TraceError(ValueError):
    """torch.fx could not trace the model; the message names the module, line and fix."""


class ShapeError(ValueError):
    """Running the traced model on ``example_inputs`` failed."""


class _Tracer(fx.Tracer):
    def __init__(self, leaf_types: tuple, leaf_names: set) -> None:
        super().__init__(autowrap_functions=tuple(LEAF_FUNCTIONS))
        self.proxy_buffer_attributes = True  # buffers read in forward become get_attr nodes, not constants
        self._leaf_types, self._leaf_names = leaf_types, leaf_names
        self.module_path: list[tuple[str, str]] = []

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, self._leaf_types) or qualname in self._leaf_names:
            return True
        if module_rule_for(m) is not None and not isinstance(m, (nn.Sequential, nn.ModuleList)):
            return True
        return super().is_leaf_module(m, qualname)

    def call_module(self, m, forward, args, kwargs):
        self.module_path.append((self.path_of_module(m), type(m).__name__))
        try:
            out = super().call_module(m, forward, args, kwargs)
        except Exception:
            raise  # keep the path of the failing module on the stack
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
            raise TypeError(f"leaf_modules entries must be module types, module names or "
                            f"submodules of the model; got {leaf!r}")
    return tuple(types), names


def _leaf_paths(leaf_modules: Iterable, model: nn.Module) -> set:
    """Names of the submodules ``leaf_modules`` designates (by type, name or instance)."""
    types, names = _split_leaves(leaf_modules, model)
    unknown = sorted(n for n in names if n not in dict(model.named_modules()))
    if unknown:
        raise ValueError(f"leaf_modules names {unknown} that are not submodules of {type(model).__name__}")
    return names | {n for n, m in model.named_modules() if n and types and isinstance(m, types)}


def symbolic_trace(model: nn.Module, leaf_modules: Iterable = ()) -> fx.GraphModule:
    """Trace ``model`` with torch.fx; raise :class:`TraceError` with a fix on failure.
    Attributes the forward assigns while traced (proxies) are undone."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    tracer = _Tracer(*_split_leaves(leaf_modules, model))
    try:
        with untouched(model):
            graph = tracer.trace(model)
    except Exception as err:  # fx raises TraceError, TypeError, RuntimeError, ...
        raise TraceError(_explain(model, tracer, err)) from err
    name = type(model).__name__
    return fx.GraphModule(tracer.root, graph, name)


def _explain(model: nn.Module, tracer: _Tracer, err: Exception) -> str:
    path, kind = tracer.module_path[-1] if tracer.module_path else ("", type(model).__name__)
    where = _user_frame(err)
    where_txt = f" at {where}" if where else ""
    module_txt = f"submodule '{path}' ({kind})" if path else f"the model's own forward ({kind})"
    return (
        f"torch.fx cannot trace {module_txt}{where_txt}: {type(err).__name__}: {err}\n"
        f"Fix: pass leaf_modules=[{kind}] (or the name '{path or kind}') so this module is "
        f"treated as a black box (its channels are then frozen unless you register a rule "
        f"with surgery.extend.register_module_rule({kind})), or remove the data-dependent control "
        f"flow from its forward."
    )


def _user_frame(err: Exception) -> str:
    torch_dir = os.path.dirname(torch.__file__)
    frames = [f for f in traceback.extract_tb(err.__traceback__)
              if not f.filename.startswith(torch_dir) and "surgery" not in f.filename]
    if not frames:
        return ""
    f = frames[-1]
    return f"{f.filename}:{f.lineno} `{(f.line or '').strip()}`"


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


class _Recorder(fx.Interpreter):
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
        n.meta[VALUE_KEY] = _summary(result)
        return result

    def args_of(self, n: fx.Node) -> list:
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        return list(args) + list(kwargs.values())


def propagate(gm: fx.GraphModule, example_inputs: Any) -> None:
    """Run ``gm`` once on the inputs and record value summaries; restores train/eval."""
    args, kwargs = as_inputs(example_inputs)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if kwargs:
        unknown = sorted(set(kwargs) - {p.target for p in placeholders})
        if unknown:
            raise ValueError(f"example_inputs has keys {unknown} that the model's forward does not take; "
                             f"its inputs are {[p.target for p in placeholders]}")
        args = tuple(kwargs.get(p.target, p.args[0] if p.args else None) for p in placeholders)
    elif len(args) < len(placeholders):
        args = args + tuple(p.args[0] if p.args else None for p in placeholders[len(args):])
    try:
        with evaluating(gm), torch.no_grad():
            _Recorder(gm).run(*args)
    except _NodeFailure as err:
        raise ShapeError(err.message) from err.__cause__
