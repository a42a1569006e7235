"""``surgery.trace``: model + example inputs -> ChannelGraph (capture, analysis, ties, groups).

Example:
    >>> import torch
    >>> from torchvision.models import resnet18
    >>> len(trace(resnet18(), torch.randn(1, 3, 64, 64)).prunable_groups)
    12
"""
from __future__ import annotations

import warnings
from typing import Any, Iterable

import torch.nn as nn

from surgery.core.config import check_attention
from surgery.core.frames import user_stacklevel
from surgery.core.inputs import check_finite, check_not_empty, input_spec, layer_names
from surgery.groups.analysis import analyse
from surgery.groups.graph import ChannelGraph, build_groups
from surgery.groups.ties import couple_shared_tensors
from surgery.ops.context import RuleContext
from surgery.capture.front import capture, check_model
from surgery.capture.fx import owning_module

__all__ = ["trace"]


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
        tracer: ``"fx"`` (torch.fx symbolic tracing; shapes on the meta device),
            ``"export"`` (``torch.export.export(strict=False)``: an aten-level graph with
            fake-tensor shapes; for models fx cannot trace, Hugging Face transformers
            among them), ``"run"`` (the aten ops one forward on the example inputs runs,
            for models whose forward branches on data, such as detectors) or ``"auto"``
            (fx, then export, then run, each when the one before fails).

    Example:
        >>> import torch, torchvision, surgery
        >>> g = surgery.trace(torchvision.models.resnet18(), torch.randn(1, 3, 64, 64))
        >>> len(g.prunable_groups)
        12
    """
    check_model(model)
    check_not_empty(example_inputs)
    check_finite(example_inputs)
    check_attention(attention)
    ignored = layer_names(model, ignored_layers, "ignored_layers")
    gm, front = capture(model, example_inputs, leaf_modules, tracer)
    ctx = analyse(gm, attention, model)
    if front != "fx":
        _tie_literals(ctx)
    couple_shared_tensors(ctx, gm)
    _freeze_ignored(ctx, ignored)
    groups, roots = build_groups(ctx)
    modules = dict(gm.named_modules(remove_duplicate=False))
    for g in groups:
        for m in g.members:
            m.type_name = "Parameter" if m.kind == "param" else type(modules.get(m.name) or gm.get_submodule(m.name)).__name__
    graph = ChannelGraph.from_context(ctx, groups, roots, front=front, attention=attention,
                                      input_spec=input_spec(example_inputs), example_inputs=example_inputs)
    for w in ctx.warnings:
        warnings.warn(w, stacklevel=user_stacklevel())
    return graph


def _tie_literals(ctx: RuleContext) -> None:
    """Exported graphs hold the values of the user's attributes as literals; the user's
    forward runs unpatched, so reshape literals of one module that share a value (q, k and v
    views by ``self.head_dim``) are one attribute: they must change together."""
    by_value: dict = {}
    for p in ctx.patches:
        owner = owning_module(next((n for n in ctx.gm.graph.nodes if n.name == p.node), None))
        by_value.setdefault((owner, len(p.vars)), []).append(p.vars)
    for arrays in by_value.values():
        for a in arrays[1:]:
            ctx.vars.unify(arrays[0], a)


def _freeze_ignored(ctx: RuleContext, names: list) -> None:
    for (name, role), slot in ctx.slots.items():
        inside = any(n == "" or name == n or name.startswith(n + ".") for n in names)
        if role != "in" and inside:
            ctx.vars.freeze(slot.vars, f"'{name}' is in ignored_layers")
