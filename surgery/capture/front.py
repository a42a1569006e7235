"""Capture a model as a graph with value summaries: torch.fx first, torch.export when fx
fails, and a recorded run of the forward (:mod:`surgery.capture.run`) when both fail.

Example:
    >>> import torch
    >>> gm, front = capture(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1)), torch.randn(1, 3, 8, 8))
    >>> front
    'fx'
"""
from __future__ import annotations

import warnings
from typing import Any, Iterable

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.utils.parametrize  # noqa: F401  (check_model)
import torch.nn.utils.prune  # noqa: F401  (check_model)

from surgery.core.config import check_tracer
from surgery.capture.meta import NeedsValues, propagate_meta
from surgery.core.frames import user_stacklevel
from surgery.core.errors import ArgumentError, ArgumentTypeError, ExportError, ShapeError, TraceError
from surgery.core.transaction import untouched
from surgery.capture.export import export_graph
from surgery.capture.fx import leaf_paths, propagate, symbolic_trace
from surgery.capture.run import run_graph

__all__ = ["capture", "check_model", "shapes"]


def shapes(gm: fx.GraphModule, model: nn.Module, example_inputs: Any) -> str:
    """Record every node's shape: on the meta device (no forward on real tensors), or, when the
    graph reads values, by one real forward; returns which ("meta" or "real")."""
    try:
        propagate_meta(gm, example_inputs)
        return "meta"
    except NeedsValues as err:
        if _on_meta(model):
            raise ShapeError(f"the model is on the meta device and its graph needs values to run ({err}); "
                             f"materialize it (model.to_empty(device='cpu') and load its weights) to trace it") from None
    with untouched(model):  # leaf modules run for real and may write into their containers
        propagate(gm, example_inputs)
    return "real"


def _on_meta(model: nn.Module) -> bool:
    return any(t.is_meta for t in list(model.parameters()) + list(model.buffers()))


def capture(model: nn.Module, example_inputs: Any, leaf_modules: Iterable = (),
            tracer: str = "auto") -> tuple[fx.GraphModule, str]:
    """(graph whose nodes carry value summaries, "fx", "export" or "run")."""
    check_tracer(tracer)
    if tracer == "run":
        return run_graph(model, example_inputs, leaf_paths(leaf_modules, model)), "run"
    if tracer != "export":
        try:
            gm = symbolic_trace(model, leaf_modules)
        except TraceError as err:
            if tracer == "fx":
                raise
            fx_error = err
        else:
            shapes(gm, model, example_inputs)
            return gm, "fx"
    try:
        return export_graph(model, example_inputs, leaf_paths(leaf_modules, model)), "export"
    except ExportError as err:
        if tracer != "auto":
            raise
        export_error = err
    try:
        gm = run_graph(model, example_inputs, leaf_paths(leaf_modules, model))
    except TraceError as err:
        raise TraceError(f"{fx_error}\n\ntorch.export failed too: {export_error}\n\nrecording a run failed "
                         f"too: {err}") from err
    warnings.warn(f"neither torch.fx nor torch.export can capture {type(model).__name__} "
                  f"({str(export_error).splitlines()[0][:200]}); analysed the forward as it ran on the example "
                  f"inputs (tracer='run'): a branch those inputs do not take is not analysed, and "
                  f"verification checks those inputs. Pass tracer='run' to choose it without this warning",
                  stacklevel=user_stacklevel())
    return gm, "run"


def check_model(model: nn.Module) -> None:
    """Refuse, with the fix, models the engine must not rewrite as they are."""
    if not isinstance(model, nn.Module):
        raise ArgumentTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if hasattr(model, "_orig_mod") and type(model).__name__ == "OptimizedModule":
        raise ArgumentTypeError("this model is wrapped by torch.compile: pass model._orig_mod (the module it wraps), "
                        "then compile the pruned model again")
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        raise ArgumentTypeError(f"this model is wrapped by {type(model).__name__}: pass model.module, then wrap the "
                        f"pruned model again")
    if isinstance(model, torch.jit.ScriptModule):
        raise ArgumentTypeError("TorchScript modules cannot be traced by torch.fx: prune the Python module before "
                        "scripting it (torch.jit.script(pruned))")
    for name, m in model.named_modules():
        where = f"'{name}'" if name else "the model"
        if torch.nn.utils.parametrize.is_parametrized(m):
            raise ArgumentError(f"{where} ({type(m).__name__}) has parametrizations (weight_norm, spectral_norm, ...): "
                             f"remove them with torch.nn.utils.parametrize.remove_parametrizations(module, "
                             f"'weight') before pruning, and apply them again to the pruned model")
        for hook in m._forward_pre_hooks.values():
            if isinstance(hook, torch.nn.utils.prune.BasePruningMethod):
                raise ArgumentError(f"{where} still has pruning masks (surgery.sparsity.sparsify or "
                                 f"torch.nn.utils.prune): call surgery.sparsity.make_permanent(model) first")
            if type(hook).__name__ in ("WeightNorm", "SpectralNorm"):
                raise ArgumentError(f"{where} uses the old torch.nn.utils.{type(hook).__name__.lower()[:-4]}_norm hook: "
                                 f"remove it (torch.nn.utils.remove_{type(hook).__name__.lower()[:-4]}_norm) before pruning")
