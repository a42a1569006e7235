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

import contextlib
import copy
import gc
import weakref
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import torch.utils._pytree as pytree

from surgery.core.inputs import as_inputs, check_not_empty, flat_tensors, owner_at, run_eval, tensor_at
from surgery.core.transaction import untouched
from surgery.groups.graph import ChannelGraph, Kind
from surgery.ops.handler import Handler, _masks as _kept_mask
from surgery.ops.registry import handler_for
from surgery.rewrite.layer_check import recording
from surgery.rewrite.reach import consumed_without_layer, crossed, downstream
from surgery.rewrite.rebuild import keep_indices
from surgery.rewrite.train_check import branches_on_training, train_forward

__all__ = ["masked_reference", "masked_in_place", "reference_dtype", "run_reference", "reference_outputs",
           "ReferenceRun", "watched_layers", "tolerances", "FLOAT64_LIMIT"]

FLOAT64_LIMIT = 2 * 1024 ** 3  # bytes of float64 weights for the reference and the pruned copy together
COLLECT_ABOVE = 64 * 1024 ** 2  # bytes: a reference this large that a reference cycle keeps is collected at once


# relative tolerances: (model outputs, layer fingerprints). In float32 the first pair only says
# "clearly equal": above it, the check is made again in float64 when that fits (``then``).
# Layer fingerprints are relative to their sums of magnitudes (their rounding scale).
_CONCLUSIVE = {torch.float64: (1e-7, 1e-9), torch.float32: (2e-3, 1e-4)}
_CLEAR32 = (1e-5, 1e-5)


@dataclass
class ReferenceRun:
    """What the masked reference computed on the example inputs: ``outputs`` (flat, eval
    mode) on ``inputs`` (cast to ``dtype``); ``train``: its train-mode outputs when the
    model's code reads ``self.training`` (None when it does not; a string says why train
    mode could not be run); ``model_type``: the reference's class; ``non_finite``: names of
    its parameters and buffers that hold NaN or inf; ``layers``: fingerprints of the outputs
    of the ``watched`` layers (:mod:`surgery.rewrite.layer_check`); ``tolerance`` and
    ``layer_tolerance``: how far the pruned model may differ, relative; ``then``: the dtype
    to check again in when it differs by more (None: the difference is a mismatch)."""
    dtype: torch.dtype
    inputs: Any
    outputs: list
    model_type: type
    train: list | str | None = None
    non_finite: list | None = None
    layers: dict = field(default_factory=dict)
    watched: dict = field(default_factory=dict)
    tolerance: float = 5e-2
    layer_tolerance: float | None = None
    then: torch.dtype | None = None


def tolerances(dtype: torch.dtype, then: torch.dtype | None = None) -> tuple[float, float | None]:
    """``(outputs, layers)`` relative tolerances of a check in ``dtype``: conclusive ones, or,
    in float32 with a float64 check to fall back on (``then``), the bound under which float32
    rounding alone explains a difference. No layer check below float32 (None)."""
    if dtype == torch.float32 and then is not None:
        return _CLEAR32
    return _CONCLUSIVE.get(dtype, (5e-2, None))


def masked_reference(model: nn.Module, graph: ChannelGraph, removed: np.ndarray,
                     dtype: torch.dtype | None = None) -> nn.Module:
    """A copy of ``model`` (in ``dtype``) whose layers ignore the ``removed`` units."""
    ref = copy.deepcopy(model, _cast_memo(model, dtype) if dtype is not None else None)
    layers, params = _masks_of(graph, removed)
    for name, dim, keep in params:
        _zero_param(ref, name, dim, keep)
    for name, roles in layers.items():
        module = ref.get_submodule(name)
        handler_for(module).mask(module, roles.get("in"), roles.get("out"))
    return ref


def _masks_of(graph: ChannelGraph, removed: np.ndarray) -> tuple[dict, list]:
    """``({layer: {"in"/"out": keep}}, [(raw parameter, dim, keep)])``: what the reference masks."""
    kinds = {(s.name, s.role): s.kind for s in graph.slots}
    layers: dict = {}
    params = []
    for (name, role), keep in keep_indices(graph, removed).items():
        if kinds[(name, role)] == Kind.PARAM:
            params.append((name, role.dim, keep))
        else:
            layers.setdefault(name, {})[str(role)] = keep
    return layers, params


@contextlib.contextmanager
def masked_in_place(model: nn.Module, graph: ChannelGraph, removed: np.ndarray) -> Iterator[nn.Module]:
    """``model`` itself, computing inside the block what :func:`masked_reference` computes,
    without a copy of its weights; everything is as it was after the block.

    A layer that the traced graph only calls (never reads a tensor of, shares no tensor with
    another layer) and whose handler knows its channel dims (:meth:`Handler.channel_dims`)
    is masked on its activations: hooks zero the removed channels of its input and output,
    the same as zeroing its weight columns and rows. Other layers that mix channels are
    masked on copies of their own tensors (tied tensors stay tied), and so are the raw
    parameters that lose slices. Modules' attributes, hooks and buffers are restored after
    the block."""
    layers, params = _masks_of(graph, removed)
    alone = _called_alone(model, graph)
    with untouched(model), _buffers_kept(model):
        handles, masked, originals = [], [], {}
        try:
            for name, roles in layers.items():
                module = model.get_submodule(name)
                handler = handler_for(module)
                dims = handler.channel_dims(module) if name in alone else None
                if dims is not None:
                    handles += _mask_hooks(module, dims, roles.get("in"), roles.get("out"))
                elif type(handler).mask is not Handler.mask:
                    masked.append((module, handler, roles))
                    originals.update({id(t): t for t in _own_tensors(module, recurse=True)})
            for name, _, _ in params:
                t = tensor_at(model, name)
                originals[id(t)] = t
            _swap_copies(model, originals, [name for name, _, _ in params])
            for module, handler, roles in masked:
                handler.mask(module, roles.get("in"), roles.get("out"))
            for name, dim, keep in params:
                _zero_param(model, name, dim, keep)
            yield model
        finally:
            for h in handles:
                h.remove()


def _called_alone(model: nn.Module, graph: ChannelGraph) -> set:
    """Names of the layers that the fx graph calls and reads no tensor of, and whose tensors
    no other module holds (none on another front: its graph does not call modules)."""
    if graph.front != "fx":
        return set()
    nodes = graph.gm.graph.nodes
    called = {n.target for n in nodes if n.op == "call_module"}
    read = {str(n.target).rpartition(".")[0] for n in nodes if n.op == "get_attr"}
    holders = Counter(id(t) for m in model.modules() for t in _own_tensors(m))
    return {name for name in called - read
            if all(holders[id(t)] == 1 for t in _own_tensors(model.get_submodule(name), recurse=True))}


def _own_tensors(module: nn.Module, recurse: bool = False) -> list:
    modules = module.modules() if recurse else [module]
    return [t for m in modules for t in list(m._parameters.values()) + list(m._buffers.values()) if t is not None]


def _swap_copies(model: nn.Module, originals: dict, attributes: list) -> None:
    """Replace each tensor in ``originals`` (``{id: tensor}``) by one copy wherever a module holds
    it as a parameter or buffer, and at the dotted paths ``attributes`` (plain tensor attributes)."""
    copies: dict = {}

    def copy_of(t: torch.Tensor) -> torch.Tensor:
        if id(t) not in copies:
            data = t.detach().clone()
            copies[id(t)] = nn.Parameter(data, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else data
        return copies[id(t)]

    for m in model.modules():
        for store in (m._parameters, m._buffers):
            for key, t in store.items():
                if t is not None and id(t) in originals:
                    store[key] = copy_of(t)
    for name in attributes:
        owner, attr = owner_at(model, name)
        t = getattr(owner, attr)
        if id(t) in originals:
            setattr(owner, attr, copy_of(t))


@contextlib.contextmanager
def _buffers_kept(model: nn.Module) -> Iterator[None]:
    """The values of the model's buffers are put back after the block (a forward may update them)."""
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, value in saved:
                b.copy_(value)


def _mask_hooks(module: nn.Module, dims: tuple, keep_in, keep_out) -> list:
    """Hooks that zero the channels outside ``keep_in`` of the module's input (along ``dims[0]``)
    and outside ``keep_out`` of its output (along ``dims[1]``)."""
    handles = []
    if keep_in is not None:
        def zero_input(mod, args, kwargs):
            if args:
                return (_zeroed(args[0], dims[0], keep_in),) + tuple(args[1:]), kwargs
            return args, {**kwargs, "input": _zeroed(kwargs["input"], dims[0], keep_in)}
        handles.append(module.register_forward_pre_hook(zero_input, with_kwargs=True))
    if keep_out is not None:
        handles.append(module.register_forward_hook(lambda mod, args, out: _zeroed(out, dims[1], keep_out)))
    return handles


def _zeroed(t: torch.Tensor, dim: int, keep) -> torch.Tensor:
    gone = ~_kept_mask(t.shape[dim], keep)
    return t.index_fill(dim, torch.nonzero(gone).flatten().to(t.device), 0)


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


def reference_dtype(model: nn.Module, strict: bool = False) -> torch.dtype:
    """The dtype the check runs in first: the model's when it is float64; float32 for float32,
    bfloat16 and float16 models (then float64 where float32 is in doubt, see :func:`escalation`);
    with ``strict``, float64 whenever two float64 copies of the weights fit in
    ``FLOAT64_LIMIT``. A model too large for that is checked in its own dtype."""
    own = _floating_dtype(model)
    if own == torch.float64 or (strict and _fits_float64(model)):
        return torch.float64
    return torch.float32 if own in (torch.float32, torch.bfloat16, torch.float16) else own


def escalation(model: nn.Module, dtype: torch.dtype) -> torch.dtype | None:
    """float64 when a check in ``dtype`` (float32) can be made again in float64, else None."""
    return torch.float64 if dtype == torch.float32 and _fits_float64(model) else None


def _fits_float64(model: nn.Module) -> bool:
    n = sum(t.numel() for t in list(model.parameters()) + list(model.buffers()) if t.is_floating_point())
    return 2 * 8 * n <= FLOAT64_LIMIT


def _floating_dtype(model: nn.Module) -> torch.dtype:
    first = next((p for p in model.parameters() if p.is_floating_point()), None)
    return first.dtype if first is not None else torch.float32


def own_dtype(model: nn.Module) -> torch.dtype | None:
    """The dtype of every floating parameter and buffer of ``model`` (None when they differ)."""
    dtypes = {t.dtype for t in list(model.parameters()) + list(model.buffers()) if t.is_floating_point()}
    return dtypes.pop() if len(dtypes) == 1 else (torch.float32 if not dtypes else None)


def reference_outputs(model: nn.Module, graph: ChannelGraph, removed: np.ndarray, example_inputs: Any,
                      dtype: torch.dtype | None = None, strict: bool = False) -> ReferenceRun:
    """Run the masked reference of ``model`` (:func:`run_reference`) in ``dtype`` (default:
    :func:`reference_dtype`) and keep only what it computed.

    In the model's own dtype the reference is the model itself, masked in place for the
    run (:func:`masked_in_place`: no copy of its weights). In another dtype it is a cast copy
    (:func:`masked_reference`), freed here; torch.fx's tracer leaves reference cycles that
    hold the model it traced, so a copy of ``COLLECT_ABOVE`` bytes or more that they keep is
    collected at once, and is never in memory together with the pruned model. Whether the
    model branches on ``self.training`` is asked of ``model`` (the same code), so the
    reference is never traced."""
    dtype = dtype or reference_dtype(model, strict)
    branches = branches_on_training(model, example_inputs, fx_graph(graph))
    watched = watched_layers(model, graph, removed) if tolerances(dtype)[1] is not None else {}
    if own_dtype(model) == dtype:
        with masked_in_place(model, graph, removed) as reference:
            ran = run_reference(reference, graph, example_inputs, branches, watched)
    else:
        reference = masked_reference(model, graph, removed, dtype)
        size = sum(t.numel() * t.element_size() for t in list(reference.parameters()) + list(reference.buffers()))
        alive = weakref.ref(reference)
        ran = run_reference(reference, graph, example_inputs, branches, watched)
        del reference
        if alive() is not None and size >= COLLECT_ABOVE:
            gc.collect()
    ran.then = None if strict else escalation(model, dtype)
    ran.tolerance, ran.layer_tolerance = tolerances(dtype, ran.then)
    return ran


def watched_layers(model: nn.Module, graph: ChannelGraph, removed: np.ndarray) -> dict:
    """``{name: (out_dim, keep)}``: the layers whose outputs verification fingerprints (plain
    convs and linears, :meth:`Handler.channel_dims`), with the output channels the pruned
    model keeps (None: all). Only on the fx front (its graph says which layers a node feeds),
    only layers the traced graph calls, and none after a normalisation over removed channels
    or a node that consumes removed channels without a masked layer
    (:func:`surgery.rewrite.reach.consumed_without_layer`): there the masked reference is
    not the pruned model by design, although the model's outputs may still agree."""
    if graph.front != "fx":
        return {}
    sources = {node for _, node in crossed(graph, removed)}
    sources |= consumed_without_layer(graph, removed, lambda name: _masks(model, name))
    after = downstream(graph.gm, sources) if sources else set()
    names = {n.target for n in graph.gm.graph.nodes if n.op == "call_module" and n.name not in after}
    keeps = keep_indices(graph, removed)
    watched = {}
    for name in sorted(names, key=str):
        dims = _channel_dims(model, name)
        if dims is not None:
            keep = keeps.get((name, "out"))
            watched[name] = (dims[1], None if keep is None else torch.as_tensor(keep, dtype=torch.long))
    return watched


def _masks(model: nn.Module, name: str) -> bool:
    """Whether the layer at ``name`` is masked for the reference (its handler masks it)."""
    try:
        module = model.get_submodule(name)
        handler = handler_for(module)
    except (AttributeError, TypeError, KeyError):
        return False
    return handler.channel_dims(module) is not None or type(handler).mask is not Handler.mask


def _channel_dims(model: nn.Module, name: str) -> tuple[int, int] | None:
    try:
        module = model.get_submodule(name)
        return handler_for(module).channel_dims(module)
    except (AttributeError, TypeError, KeyError):  # not a module of the model, or no handler
        return None


def run_reference(reference: nn.Module, graph: ChannelGraph, example_inputs: Any,
                  branches: bool | None = None, watched: dict | None = None) -> ReferenceRun:
    """Run the masked ``reference`` on the example inputs (cast to its dtype), in eval mode
    (fingerprinting the ``watched`` layers' outputs, :func:`watched_layers`) and, when its
    code reads ``self.training`` (``branches``; None: find out), in train mode too (see
    :mod:`train_check`)."""
    check_not_empty(example_inputs)
    dtype = next((p.dtype for p in reference.parameters() if p.is_floating_point()), torch.float32)
    inputs = cast_inputs(example_inputs, dtype)
    with recording(reference, watched or {}) as layers:
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
    ran = ReferenceRun(dtype, inputs, outputs, type(reference), train, [] if finite else non_finite(reference),
                       layers, dict(watched or {}))
    ran.tolerance, ran.layer_tolerance = tolerances(dtype)
    return ran


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
