"""Verification: is the rewritten model the original with the removed channels masked?

The reference is built from the engine's own plan, not from the rewritten weights: a
copy of the original in which every layer ignores the removed channels
(:mod:`surgery.rewrite.reference`). Removing channels is exactly that, so the outputs must
agree to float tolerance. They run in float64 when two float64 copies fit in
``FLOAT64_LIMIT`` bytes, else in the model's dtype with a looser tolerance. The reference
runs before the rewrite and is freed before the pruned model is built.

Each output is compared on its own scale. Normalisations over channels (LayerNorm,
GroupNorm with one group, ``F.layer_norm``) see the removed channels in the original, so an
output that such a norm feeds cannot be checked exactly: its shape is checked, every other
output is compared, and :class:`Verification` lists the norms. When a module's code reads
``self.training``, the model is compared in train mode too (:mod:`surgery.rewrite.train_check`).
Empty example inputs are refused: they would compare nothing.
"""
from __future__ import annotations

from collections import Counter

import contextlib
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn

from surgery.core.frames import user_stacklevel
from surgery.groups.graph import ChannelGraph, Group
from surgery.ops.handler import Handler
from surgery.ops.registry import handler_for
from surgery.core.inputs import check_finite, check_not_empty, flat_tensors, run_eval
from surgery.rewrite.reach import crossed, downstream, reached_outputs
from surgery.rewrite.rebuild import keep_indices, rewrite
from surgery.core.transaction import transaction, untouched
from surgery.ops.context import VALUE_KEY, TensorMeta
from surgery.rewrite import layer_check
from surgery.rewrite.layer_check import recording
from surgery.rewrite.reference import (FLOAT64_LIMIT, ReferenceRun, _channel_dims, fx_graph, masked_reference,
                                       reference_outputs, run_reference, watched_layers)
from surgery.rewrite.train_check import branches_on_training, train_forward
from surgery.capture.fx import owning_module
from surgery.capture.meta import NeedsValues, run_meta, sharing_traces
from surgery.core.errors import VerificationError

__all__ = ["Verification", "masked_reference", "verify", "compare", "checked_rewrite",
           "check_output_shapes", "FLOAT64_LIMIT"]

MIN_FINITE = 0.5  # fraction of the original's output values that must be finite to say "verified"


@dataclass
class Verification:
    """What verification checked: ``exact`` (every output compared with the masked reference,
    to ``max_error`` relative to each output's scale, in ``dtype``); otherwise ``max_error``
    covers the outputs in ``compared`` (None: only shapes were checked) and ``unchecked``
    says why the rest were not. ``train`` says what was checked in train mode."""
    exact: bool
    max_error: float | None = None
    dtype: str = ""
    unchecked: list = field(default_factory=list)
    compared: str = ""
    train: str = ""
    elements: int = 0  # output values compared (finite in the reference)
    total: int = 0  # output values in the compared outputs
    layers: int = 0  # layer calls whose output fingerprints were compared

    def __str__(self) -> str:
        train = f"; {self.train}" if self.train else ""
        counted = f", {self.elements:,} of {self.total:,} output values compared" if self.total else ""
        counted += f", {self.layers:,} layer outputs compared" if self.layers else ""
        if self.exact:
            return (f"verified: pruned == masked original (max relative error {self.max_error:.2e}, "
                    f"{self.dtype}{counted}){train}")
        if self.max_error is not None:
            return (f"partly verified: {self.compared} equal the masked original (max relative error "
                    f"{self.max_error:.2e}, {self.dtype}{counted}); the others' shapes only: "
                    + self._reasons() + train)
        return "not verified (output shapes only); outputs not compared: " + self._reasons() + train

    def _reasons(self, shown: int = 3) -> str:
        """The first reasons in ``unchecked``, with a count of the rest (all are in the list)."""
        rest = len(self.unchecked) - shown
        more = f"; and {rest} more (see .unchecked)" if rest > 0 else ""
        return "; ".join(self.unchecked[:shown]) + more


def crossed_norms(graph: ChannelGraph, removed: np.ndarray) -> list:
    """Descriptions of channel normalisations that see removed channels."""
    return [what for what, _ in crossed(graph, removed)]




def inexact_outputs(graph: ChannelGraph, removed: np.ndarray) -> list:
    """For each tensor of the traced output (flattened), whether a crossed norm feeds it."""
    nodes = {node for _, node in crossed(graph, removed)}
    return reached_outputs(graph.gm, nodes, _tensor_count) if nodes else \
        [False] * len(reached_outputs(graph.gm, set(), _tensor_count))


def _tensor_count(node: fx.Node) -> int:
    def count(v) -> int:
        if isinstance(v, (TensorMeta, torch.Tensor)):
            return 1
        return sum(count(x) for x in v) if isinstance(v, (list, tuple)) and not isinstance(v, torch.Size) else 0
    return count(node.meta.get(VALUE_KEY))


def verify(reference: nn.Module, pruned: nn.Module, graph: ChannelGraph, removed: np.ndarray,
           example_inputs: Any) -> Verification:
    """Compare ``pruned`` with the masked ``reference`` on the example inputs, each output on
    its own scale (outputs fed by a crossed norm: shapes only), in eval mode and, when the
    model's code reads ``self.training``, in train mode too; raise :class:`VerificationError`
    naming the first diverging layer on a mismatch."""
    try:
        watched = watched_layers(reference, graph, removed)
        return compare(run_reference(reference, graph, example_inputs, watched=watched), pruned, graph, removed)
    except _Diverged as d:
        where = d.where
        if where is None:
            with cast_temporarily(pruned, d.run.dtype), untouched(pruned):
                where = first_divergence(reference, pruned, d.run.inputs, d.tol, keep_indices(graph, removed),
                                         d.skip)
        raise VerificationError(_message(d.error, d.tol, d.run.dtype, where, graph, removed)
                                + _mask_hint(reference, where)) from None


class _Diverged(Exception):
    """The pruned model differs from the reference (``error`` over ``tol``) at layer ``where``
    (a fingerprinted layer) or in its outputs (``where`` None: the layer to blame is found
    where a reference is at hand; ``skip``: layers not to blame)."""

    def __init__(self, run: ReferenceRun, error: float, tol: float, skip: set, where: str | None = None) -> None:
        super().__init__(f"differs by {error:.3g}")
        self.run, self.error, self.tol, self.skip, self.where = run, error, tol, skip, where


class FailsToRun(VerificationError):
    """The rewritten model raised when run on the example inputs; ``module`` names the
    innermost module whose forward raised ("" when none did)."""

    def __init__(self, message: str, module: str) -> None:
        super().__init__(message)
        self.module = module


class _Doubt(Exception):
    """A float32 check found a difference that float32 rounding could explain: check again in
    ``dtype``."""

    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__(f"check again in {dtype}")
        self.dtype = dtype


def compare(run: ReferenceRun, pruned: nn.Module, graph: ChannelGraph, removed: np.ndarray) -> Verification:
    """Compare ``pruned`` with what the masked reference computed (:func:`run_reference`): its
    outputs and the fingerprints of its layers (:mod:`layer_check`). Raises :class:`_Diverged`
    on a mismatch (after checking the output shapes), or :class:`_Doubt` when a float32
    difference should be looked at in float64 (``run.then``)."""
    norms = crossed(graph, removed)
    dtype, inputs, ref_out, tol = run.dtype, run.inputs, run.outputs, run.tolerance
    with cast_temporarily(pruned, dtype), untouched(pruned):
        with recording(pruned, _same_layers(pruned, run.watched), scale=False) as layers:
            out = flat_tensors(run_eval(pruned, inputs))
        inexact = inexact_outputs(graph, removed)
        if len(inexact) != len(ref_out):  # the model ran another branch than the one traced
            inexact = [bool(norms)] * len(ref_out)
        compared = [i for i, bad in enumerate(inexact) if not bad]
        _check_something_compared(ref_out, compared)
        error, elements, total = _relative_error(ref_out, out, compared)
        del out
        layer_tol = run.layer_tolerance if run.layer_tolerance is not None else float("inf")
        layer_error, where, calls = layer_check.layer_error(run.layers, layers, layer_tol)
        if not error <= tol or where is not None:
            if run.then is not None:
                raise _Doubt(run.then)
            check_output_shapes(graph, pruned, inputs)  # a shape change gets its own message
            if where is not None:
                raise _Diverged(run, layer_error, layer_tol, set(), where)
            raise _Diverged(run, error, tol, _modules_after(graph, norms))
        if type(pruned) is run.model_type:
            train = _train_mode(run, pruned, tol, compare=not norms)
        else:  # a patched GraphModule: its forward keeps the branches of `self.training` that were traced
            train = _train_runs(pruned, inputs)
            train += " (a GraphModule: `if self.training` branches as traced)" if train else ""
    kind = str(dtype).replace("torch.", "")
    counts = dict(elements=elements, total=total, layers=calls)
    if elements < total:  # some outputs are NaN or inf: name the weights that hold such values
        warn_non_finite(run.non_finite or [])
    if total and elements < MIN_FINITE * total:
        return Verification(exact=False, unchecked=[
            f"only {elements:,} of {total:,} output values of the original are finite (NaN or inf in the inputs or "
            f"weights; at least {MIN_FINITE:.0%} are needed to call it verified)"] + [w for w, _ in norms],
            train=train, **counts)
    if len(compared) == len(ref_out):
        return Verification(exact=True, max_error=error, dtype=kind, train=train, **counts)
    unchecked = [what for what, _ in norms]
    if not compared:
        return Verification(exact=False, unchecked=unchecked, train=train, layers=calls)
    return Verification(exact=False, max_error=error, dtype=kind, unchecked=unchecked,
                        compared=f"outputs {compared} of {len(ref_out)}", train=train, **counts)


def _same_layers(pruned: nn.Module, watched: dict) -> dict:
    """The ``watched`` layers that the pruned model has, unchanged in kind: ``{name: (dim, None)}``
    (its outputs hold the kept channels only)."""
    return {name: (dim, None) for name, (dim, _) in watched.items() if _channel_dims(pruned, name) is not None}


def _check_something_compared(ref_out: list, compare: list) -> None:
    if compare and not any(ref_out[i].numel() for i in compare):
        raise VerificationError("the model's outputs on example_inputs are empty, so verification would "
                                "compare nothing; the model was left as it was. Give example inputs with at "
                                "least one sample that yields output")


def _modules_after(graph: ChannelGraph, crossed: list) -> set:
    """Layers a crossed norm feeds: they differ by design, never the ones to blame."""
    reached = downstream(graph.gm, {node for _, node in crossed}) if crossed else set()
    return {n.target for n in graph.gm.graph.nodes if n.op == "call_module" and n.name in reached}


def _train_mode(run: ReferenceRun, pruned: nn.Module, tol: float, compare: bool) -> str:
    """Train-mode check for models whose code reads ``self.training`` (``run.train`` holds the
    reference's train-mode outputs): the pruned model must run and (``compare``) equal the
    masked reference; '' when not needed."""
    if run.train is None:
        return ""
    if isinstance(run.train, str):
        return run.train
    out = _train_outputs(pruned, run.inputs)
    error = _relative_error(run.train, out, list(range(len(run.train))) if compare else [])[0]
    if not error <= tol and run.then is not None:
        raise _Doubt(run.then)
    if not error <= tol:
        raise VerificationError(
            f"in train mode (the model's code reads self.training) the pruned model differs from the original "
            f"with the removed channels masked by {error:.3g} (relative; tolerance {tol:g}); the model was left "
            f"as it was. A branch taken only in training uses channels the trace did not see: trace the model "
            f"in train mode (model.train()), or keep those layers with ignored_layers")
    return "train mode compared too" if compare else "train mode: shapes"


def _train_runs(pruned: nn.Module, inputs: Any, traced: fx.Graph | None = None) -> str:
    """With no reference: when the model's code reads ``self.training``, the pruned model must
    run in train mode; '' when not needed. ``traced``: the original's fx graph in its mode,
    which stands for the pruned model's when its class was kept (same code, no literal
    patched), so only the other mode is traced."""
    if not branches_on_training(pruned, inputs, traced):
        return ""
    _train_outputs(pruned, inputs)
    return "train mode: runs"


def _train_outputs(pruned: nn.Module, inputs: Any) -> list:
    try:
        with train_forward(pruned) as run:
            return flat_tensors(run(inputs))
    except Exception as err:
        with train_forward(pruned) as run:
            where = _failing_module(pruned, lambda: run(inputs))
        raise VerificationError(
            f"in train mode (the model's code reads self.training) the pruned model fails on the example inputs"
            f"{f' in module {where!r}' if where else ''} ({type(err).__name__}: {err}); the model was left as it "
            f"was. A branch taken only in training "
            f"uses layers the trace did not see: trace the model in train mode (model.train()), or keep "
            f"those layers with ignored_layers") from err


@contextlib.contextmanager
def cast_temporarily(model: nn.Module, dtype: torch.dtype):
    """Floating parameters and buffers in ``dtype`` inside the block, then each back to its own
    dtype. A widening cast (float32, bfloat16 or float16 to float64) is undone by casting back,
    bit for bit, so the originals are not kept meanwhile (the pruned copy's memory is not held
    twice); any other cast, and tensors sharing storage (ties must stay ties), keep them."""
    tensors = [t for t in list(model.parameters()) + list(model.buffers()) if t.is_floating_point()]
    storages = Counter(t.untyped_storage().data_ptr() for t in tensors)
    saved = [(t, t.dtype, None if _widens(t.dtype, dtype) and storages[t.untyped_storage().data_ptr()] == 1
              else t.data) for t in tensors]
    try:
        for t in tensors:
            t.data = t.data.to(dtype)
        yield model
    finally:
        for t, old, data in saved:
            t.data = data if data is not None else t.data.to(old)


def _widens(old: torch.dtype, new: torch.dtype) -> bool:
    return new == torch.float64 and old in (torch.float32, torch.bfloat16, torch.float16)


def _relative_error(xs: list, ys: list, compare: list) -> tuple[float, int, int]:
    """``(error, compared, total)``: the largest difference of the outputs in ``compare``, each
    relative to the largest finite value of its reference, over the positions where the
    reference is finite (``compared`` of ``total`` values). inf when the outputs' number,
    shapes or integer values differ, or the pruned model is not finite where the reference is."""
    if len(xs) != len(ys) or any(x.shape != y.shape for x, y in zip(xs, ys)):
        return float("inf"), 0, 0
    error, compared, total = 0.0, 0, 0
    for i in compare:
        x, y = xs[i], ys[i]
        total += x.numel()
        if not x.is_floating_point():
            if not torch.equal(x, y):
                return float("inf"), compared, total
            compared += x.numel()
            continue
        finite = torch.isfinite(x)
        n = int(finite.sum())
        if not n:
            continue
        if not bool(torch.isfinite(y[finite]).all()):
            return float("inf"), compared, total
        compared += n
        x, y = x[finite], y[finite]
        scale = float(x.abs().max()) or 1.0
        error = max(error, float((x - y).abs().max()) / scale)
    return error, compared, total


def first_divergence(reference: nn.Module, pruned: nn.Module, inputs: Any, tol: float,
                     keeps: dict | None = None, skip: set = frozenset()) -> str | None:
    """The first module (in execution order, not in ``skip``) whose output differs on the
    channels it kept."""
    seen: list = []

    def recorder(store: dict, name: str):
        def hook(module, args, output):
            if name not in store:
                store[name] = [t.detach() for t in flat_tensors(output)]
                if store is ref_out:
                    seen.append(name)
        return hook

    ref_out, new_out = {}, {}
    handles = [m.register_forward_hook(recorder(ref_out, n)) for n, m in reference.named_modules() if n]
    handles += [m.register_forward_hook(recorder(new_out, n)) for n, m in pruned.named_modules() if n]
    try:
        run_eval(reference, inputs)
        run_eval(pruned, inputs)
    except Exception:
        return None
    finally:
        for h in handles:
            h.remove()
    for name in seen:
        if name in new_out and name not in skip and _diverges(ref_out[name], new_out[name], (keeps or {}).get((name, "out")), tol):
            return name
    return None


def _diverges(ref: list, new: list, keep: np.ndarray | None, tol: float) -> bool:
    for a, b in zip(ref, new):
        if not (a.is_floating_point() and b.is_floating_point()):
            continue
        if a.shape != b.shape:
            a = _kept_view(a, b, keep)
            if a is None:
                continue  # cannot align: not the place to blame
        finite = torch.isfinite(a)
        if not bool(finite.any()):
            continue
        a, b = a[finite], b[finite]
        if not bool(torch.isfinite(b).all()) or float((a - b).abs().max()) > tol * max(float(a.abs().max()), 1e-12):
            return True
    return False


def _kept_view(a: torch.Tensor, b: torch.Tensor, keep: np.ndarray | None) -> torch.Tensor | None:
    """``a`` restricted to the kept channels along the one dim where ``a`` and ``b`` differ."""
    dims = [d for d in range(a.dim()) if a.dim() == b.dim() and a.shape[d] != b.shape[d]]
    if keep is None or len(dims) != 1 or len(keep) != b.shape[dims[0]]:
        return None
    return a.index_select(dims[0], torch.as_tensor(keep, dtype=torch.long, device=a.device))


def _message(error: float, tol: float, dtype, where: str | None, graph: ChannelGraph, removed) -> str:
    group = _group_of_layer(graph, where, removed) if where else None
    place = f"the first layer whose output diverges is '{where}'" if where else "no single layer could be blamed"
    if group is not None:
        place += f" (group {group.index}: {', '.join(sorted({m.name for m in group.members}))[:200]})"
    return (f"the pruned model differs from the original with the removed channels masked by {error:.3g} "
            f"(relative; tolerance {tol:g} in {str(dtype).replace('torch.', '')}); {place}. The model was left "
            f"as it was. This is a bug in a channel rule or handler: please report it with the model. "
            f"Meanwhile add that layer to ignored_layers, or pass verify=False at your own risk.")


def _mask_hint(reference: nn.Module, where: str | None) -> str:
    if not where:
        return ""
    try:
        handler = handler_for(reference.get_submodule(where))
    except (TypeError, AttributeError):
        return ""
    if type(handler).mask is Handler.mask and type(handler).__module__ != "surgery.ops.handler":
        return (f" Note: {type(handler).__name__} (your handler for '{where}') has no mask(); if that layer "
                f"mixes channels, implement mask(module, keep_in, keep_out) so verification can model it.")
    return ""


def _group_of_layer(graph: ChannelGraph, name: str, removed) -> Group | None:
    gone = set(np.asarray(removed).tolist())
    for g in graph.groups:
        if any(m.name == name for m in g.members) and gone & set(g.units.tolist()):
            return g
    return next((g for g in graph.groups if any(m.name == name for m in g.members)), None)


def check_output_shapes(graph: ChannelGraph, pruned: nn.Module, example_inputs: Any) -> None:
    """Run ``pruned`` on the example inputs, on the meta device when it can (no forward on real
    tensors), else for real; output shapes must equal the traced ones."""
    # the traced graph holds no size literals: with the rebuilt layers it is the pruned model's
    reuse = graph.gm.graph if graph.front == "fx" and not graph.patches and not graph.swaps \
        and not isinstance(pruned, fx.GraphModule) else None
    try:
        out = run_meta(pruned, example_inputs, reuse)
    except NeedsValues:
        out = run_eval(pruned, example_inputs)
    expected = [n for n in graph.gm.graph.nodes if n.op == "output"][0]
    want = _shapes(expected.args[0], lambda n: getattr(n.meta.get(VALUE_KEY), "shape", None)
                   if isinstance(n, fx.Node) else None)
    got = _shapes(out, lambda t: t.shape if isinstance(t, torch.Tensor) else None)
    if graph.front != "fx":  # the exported graph returns the output's tensors, flat
        got = [t.shape for t in flat_tensors(out)]
    if want != got:
        makers = sorted({owning_module(n) or "" for n in expected.all_input_nodes} - {""})
        where = f" (outputs made in module {', '.join(repr(m) for m in makers[:3])})" if makers else ""
        raise VerificationError(f"the pruned model's output shapes {got} differ from the original {want}{where}; "
                                f"the model was left as it was. Please report this model.")


def _shapes(obj: Any, leaf) -> Any:
    if isinstance(obj, (list, tuple)) and not isinstance(obj, torch.Size):
        return [_shapes(o, leaf) for o in obj]
    if isinstance(obj, dict):
        return {k: _shapes(v, leaf) for k, v in obj.items()}
    v = leaf(obj)
    return tuple(v) if isinstance(v, torch.Size) else None


def warn_non_finite(names: list) -> None:
    """Name the parameters and buffers holding NaN or inf: the outputs they reach cannot be
    compared, so verification covers less (it says how much)."""
    if names:
        warnings.warn(f"{len(names)} parameters or buffers hold NaN or inf ({', '.join(names[:3])}"
                      f"{', ...' if len(names) > 3 else ''}): outputs they reach are not compared by verification",
                      stacklevel=user_stacklevel())


def warn_norms(norms: list) -> None:
    """Say once per call which normalisations over channels make the rewrite inexact."""
    if norms:
        warnings.warn(f"pruning through normalisations over channels ({'; '.join(norms[:3])}"
                      f"{' ...' if len(norms) > 3 else ''}): their statistics change, so the pruned model is "
                      f"not exactly the masked original and verification checks shapes only. Fine-tune after "
                      f"pruning, or keep those channels with ignored_layers.", stacklevel=user_stacklevel())


def checked_rewrite(model: nn.Module, graph: ChannelGraph, removed: np.ndarray, example_inputs: Any, *,
                    inplace: bool, verify_exact: bool = True, new_object_ok: bool = False, strict: bool = False
                    ) -> tuple[nn.Module, Verification]:
    """Rewrite, then verify (exactly, or shapes only with ``verify_exact=False``); all or
    nothing: with ``inplace`` the model is restored on any error, and without it the
    user's model is never touched. ``inplace`` without ``new_object_ok`` returns the model
    object itself or raises :class:`surgery.rewrite.rebuild.InPlaceError`.

    The masked reference runs before the rewrite (the model itself, masked for that run, or a
    cast copy freed at once): only its outputs and its layers' fingerprints are kept, so it is
    never in memory together with the pruned model. A float32 check that finds a difference
    within what float32 rounding could explain is made again in float64 when two float64
    copies fit (``strict``: in float64 from the start; :func:`reference_dtype`). On a
    mismatch the model is restored and, when no layer was named, both sides are built again
    to name the first diverging one."""
    check_not_empty(example_inputs)
    check_finite(example_inputs)
    norms = crossed_norms(graph, removed)
    warn_norms(norms)
    skipped = ["nothing was removed"] if not len(removed) else \
        [f"not exact by design, a normalisation over channels sees removed ones: {n}" for n in norms] \
        if verify_exact else ["verify=False"]
    dtype = None
    while True:
        ran = None
        if verify_exact and len(removed) and not all(inexact_outputs(graph, removed) or [True]):
            ran = reference_outputs(model, graph, removed, example_inputs, dtype, strict)
        try:
            with transaction(model) if inplace else contextlib.nullcontext(), sharing_traces():
                new = rewrite(model, graph, removed, inplace=inplace, new_object_ok=new_object_ok,
                              values=verify_exact)
                with untouched(new):  # the runs below leave the model's containers as they were
                    result = _check(ran, new, graph, removed, example_inputs, verify_exact, skipped)
        except _Doubt as doubt:  # the model is as it was: check again in a wider dtype
            dtype = doubt.dtype
            continue
        except _Diverged as d:  # the model is as it was: rebuild both sides to name the layer
            where = d.where if d.where is not None else _blame(model, graph, removed, d)
            raise VerificationError(_message(d.error, d.tol, d.run.dtype, where, graph, removed)
                                    + _mask_hint(model, where)) from None
        object.__setattr__(new, "surgery_verification", result)
        return new, result


def _check(ran: ReferenceRun | None, new: nn.Module, graph: ChannelGraph, removed: np.ndarray, example_inputs: Any,
           verify_exact: bool, skipped: list) -> Verification:
    try:
        if ran is not None:
            return compare(ran, new, graph, removed)
        check_output_shapes(graph, new, example_inputs)
        traced = fx_graph(graph) if not isinstance(new, fx.GraphModule) else None
        train = _train_runs(new, example_inputs, traced) if verify_exact and len(removed) else ""
        return Verification(exact=False, unchecked=skipped, train=train)
    except (VerificationError, _Diverged, _Doubt):
        raise
    except Exception as err:  # the rewritten model does not even run
        where = _failing_module(new, lambda: run_eval(new, example_inputs))
        fix = (f"keep the channels of '{where}' with ignored_layers=['{where}']" if where else
               "keep the layers whose channels this step removes with ignored_layers")
        raise FailsToRun(f"the pruned model fails on the example inputs{f' in module {where!r}' if where else ''} "
                         f"({type(err).__name__}: {err}); the model was left as it was. Please report this model; "
                         f"meanwhile {fix}.", where) from err


def _blame(model: nn.Module, graph: ChannelGraph, removed: np.ndarray, d: _Diverged) -> str | None:
    """The first layer where a fresh rewrite of ``model`` diverges from a fresh masked reference."""
    try:
        reference = masked_reference(model, graph, removed, d.run.dtype)
        pruned = rewrite(model, graph, removed, inplace=False, new_object_ok=True)
        with cast_temporarily(pruned, d.run.dtype), untouched(pruned):
            return first_divergence(reference, pruned, d.run.inputs, d.tol, keep_indices(graph, removed), d.skip)
    except Exception:  # noqa: BLE001  (only the message's detail is lost)
        return None


def _closed(stack: list) -> None:
    """A forward hook's body: drop the finished module; returns None, so the output stays."""
    stack.pop()


def _failing_module(model: nn.Module, forward: Callable[[], Any]) -> str:
    """The qualified name of the innermost module whose forward raises when ``forward()`` runs
    the model ("" when none does, or when the model's own forward fails outside its submodules)."""
    names = {id(m): n for n, m in model.named_modules()}
    open_: list = []
    hooks = [m.register_forward_pre_hook(lambda mod, args: open_.append(names.get(id(mod), "")))
             for m in model.modules()]
    hooks += [m.register_forward_hook(lambda mod, args, out: _closed(open_)) for m in model.modules()]
    try:
        forward()
    except Exception:
        return open_[-1] if open_ else ""
    finally:
        for h in hooks:
            h.remove()
    return ""
