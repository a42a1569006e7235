"""Verification: is the rewritten model the original with the removed channels masked?

The reference is built from the engine's own plan, not from the rewritten weights: a
copy of the original in which every layer ignores the removed channels
(:meth:`surgery.extend.Handler.mask`: zeroed input columns of convs and linears, zeroed
rows of raw parameters). Removing channels is exactly that, so the outputs must agree
to float tolerance. They run in float64 when the two copies fit in ``FLOAT64_LIMIT``
bytes, else in the model's dtype with a looser tolerance.

Normalisations over channels (LayerNorm, GroupNorm with one group, ``F.layer_norm``)
see the removed channels in the original, so a group that reaches one cannot be checked
exactly: then only output shapes are checked and :class:`Verification` lists the groups.
"""
from __future__ import annotations

import contextlib
import copy
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn

from surgery.groups import ChannelGraph, Group, Kind
from surgery.handlers import Handler, handler_for
from surgery.inputs import as_inputs, evaluating, flat_tensors, run_eval
from surgery.rewrite import keep_indices, rewrite
from surgery.transaction import transaction
from surgery.rules.context import VALUE_KEY

__all__ = ["VerificationError", "Verification", "masked_reference", "verify", "checked_rewrite",
           "check_output_shapes", "FLOAT64_LIMIT"]

FLOAT64_LIMIT = 2 * 1024 ** 3  # bytes of float64 weights for the reference and the pruned copy together
_TOL = {torch.float64: 1e-7, torch.float32: 2e-3}


class VerificationError(RuntimeError):
    """The rewritten model does not equal the original with the removed channels masked.
    The user's model is left as it was. This is a bug in a rule or handler: please report it."""


@dataclass
class Verification:
    """What verification checked: ``exact`` (outputs compared with the masked reference, to
    ``max_error``, relative to the output scale, in ``dtype``) or only shapes, with the
    groups that cross a normalisation over channels in ``unchecked``."""
    exact: bool
    max_error: float | None = None
    dtype: str = ""
    unchecked: list = field(default_factory=list)

    def __str__(self) -> str:
        if self.exact:
            return f"verified: pruned == masked original (max relative error {self.max_error:.2e}, {self.dtype})"
        return "output shapes verified; outputs not compared: " + "; ".join(self.unchecked)


def crossed_norms(graph: ChannelGraph, removed: np.ndarray) -> list:
    """Descriptions of channel normalisations that see removed channels."""
    gone = np.zeros(len(graph.roots), dtype=bool)
    gone[np.asarray(removed, dtype=np.int64)] = True
    return [what for what, vars_ in graph.norms if gone[graph.roots[vars_]].any()]


def masked_reference(model: nn.Module, graph: ChannelGraph, removed: np.ndarray,
                     dtype: torch.dtype | None = None) -> nn.Module:
    """A copy of ``model`` (in ``dtype``) whose layers ignore the ``removed`` units."""
    ref = copy.deepcopy(model)
    if dtype is not None:
        ref.to(dtype)
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


def _zero_param(root: nn.Module, name: str, dim: int, keep: np.ndarray) -> None:
    owner, _, attr = name.rpartition(".")
    t = getattr(root.get_submodule(owner) if owner else root, attr)
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


def verify(reference: nn.Module, pruned: nn.Module, graph: ChannelGraph, removed: np.ndarray,
           example_inputs: Any) -> Verification:
    """Compare ``pruned`` with the masked ``reference`` on the example inputs; raise
    :class:`VerificationError` naming the first diverging layer on a mismatch."""
    norms = crossed_norms(graph, removed)
    if norms:
        check_output_shapes(graph, pruned, example_inputs)
        return Verification(exact=False, unchecked=norms)
    dtype = next((p.dtype for p in reference.parameters() if p.is_floating_point()), torch.float32)
    inputs = _cast(example_inputs, dtype)
    with cast_temporarily(pruned, dtype):
        out = run_eval(pruned, inputs)
        error = _relative_error(run_eval(reference, inputs), out)
        tol = _TOL.get(dtype, 5e-2)
        if not error <= tol:
            check_output_shapes(graph, pruned, inputs)  # a shape change gets its own message
            where = first_divergence(reference, pruned, inputs, tol, keep_indices(graph, removed))
            raise VerificationError(_message(error, tol, dtype, where, graph, removed) + _mask_hint(reference, where))
    return Verification(exact=True, max_error=error, dtype=str(dtype).replace("torch.", ""))


@contextlib.contextmanager
def cast_temporarily(model: nn.Module, dtype: torch.dtype):
    """Floating parameters and buffers in ``dtype`` inside the block, then each back to its own
    dtype (float32 -> float64 -> float32 is exact, so the model comes back bit for bit)."""
    tensors = [t for t in list(model.parameters()) + list(model.buffers()) if t.is_floating_point()]
    saved = [(t, t.data) for t in tensors]
    try:
        for t in tensors:
            t.data = t.data.to(dtype)
        yield model
    finally:
        for t, data in saved:
            t.data = data


def _cast(example_inputs: Any, dtype: torch.dtype) -> Any:
    cast = (lambda t: t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t)
    args, kwargs = as_inputs(example_inputs)
    return {k: cast(v) for k, v in kwargs.items()} if kwargs else tuple(cast(a) for a in args)


def _relative_error(a: Any, b: Any) -> float:
    xs, ys = flat_tensors(a), flat_tensors(b)
    if len(xs) != len(ys) or any(x.shape != y.shape for x, y in zip(xs, ys)):
        return float("inf")
    floats = [(x, y) for x, y in zip(xs, ys) if x.is_floating_point()]
    if any(not torch.equal(x, y) for x, y in zip(xs, ys) if not x.is_floating_point()):
        return float("inf")
    if not floats:
        return 0.0
    scale = max(float(x.abs().max()) for x, _ in floats if x.numel()) if any(x.numel() for x, _ in floats) else 1.0
    diff = max(float((x - y).abs().max()) if x.numel() else 0.0 for x, y in floats)
    if any(bool(torch.isnan(x).ne(torch.isnan(y)).any()) for x, y in floats):
        return float("inf")
    return diff / (scale or 1.0)


def first_divergence(reference: nn.Module, pruned: nn.Module, inputs: Any, tol: float,
                     keeps: dict | None = None) -> str | None:
    """The first module (in execution order) whose output differs on the channels it kept."""
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
        if name in new_out and _diverges(ref_out[name], new_out[name], (keeps or {}).get((name, "out")), tol):
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
        scale = float(a.abs().max()) if a.numel() else 1.0
        if a.numel() and float((a - b).abs().max()) > tol * max(scale, 1e-12):
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
    if type(handler).mask is Handler.mask and type(handler).__module__ != "surgery.handlers":
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
    """Run ``pruned`` on the example inputs; output shapes must equal the traced ones."""
    out = run_eval(pruned, example_inputs)
    expected = [n for n in graph.gm.graph.nodes if n.op == "output"][0]
    want = _shapes(expected.args[0], lambda n: getattr(n.meta.get(VALUE_KEY), "shape", None)
                   if isinstance(n, fx.Node) else None)
    got = _shapes(out, lambda t: t.shape if isinstance(t, torch.Tensor) else None)
    if getattr(graph, "front", "fx") == "export":  # the exported graph returns the output's tensors, flat
        got = [t.shape for t in flat_tensors(out)]
    if want != got:
        raise VerificationError(f"the pruned model's output shapes {got} differ from the original {want}; "
                                f"the model was left as it was. Please report this model.")


def _shapes(obj: Any, leaf) -> Any:
    if isinstance(obj, (list, tuple)) and not isinstance(obj, torch.Size):
        return [_shapes(o, leaf) for o in obj]
    if isinstance(obj, dict):
        return {k: _shapes(v, leaf) for k, v in obj.items()}
    v = leaf(obj)
    return tuple(v) if isinstance(v, torch.Size) else None


def warn_norms(norms: list) -> None:
    """Say once per call which normalisations over channels make the rewrite inexact."""
    if norms:
        warnings.warn(f"pruning through normalisations over channels ({'; '.join(norms[:3])}"
                      f"{' ...' if len(norms) > 3 else ''}): their statistics change, so the pruned model is "
                      f"not exactly the masked original and verification checks shapes only. Fine-tune after "
                      f"pruning, or keep those channels with ignored_layers.", stacklevel=4)


def checked_rewrite(model: nn.Module, graph: ChannelGraph, removed: np.ndarray, example_inputs: Any, *,
                    inplace: bool, verify_exact: bool = True) -> tuple[nn.Module, Verification]:
    """Rewrite, then verify (exactly, or shapes only with ``verify_exact=False``); all or
    nothing: with ``inplace`` the model is restored on any error, and without it the
    user's model is never touched."""
    norms = crossed_norms(graph, removed)
    warn_norms(norms)
    reference = None
    if verify_exact and len(removed) and not norms:
        reference = masked_reference(model, graph, removed, reference_dtype(model))
    skipped = ["nothing was removed"] if not len(removed) else \
        [f"not exact by design, a normalisation over channels sees removed ones: {n}" for n in norms] or \
        ["verify=False"]
    with transaction(model) if inplace else contextlib.nullcontext():
        new = rewrite(model, graph, removed, inplace=inplace)
        try:
            if reference is not None:
                result = verify(reference, new, graph, removed, example_inputs)
            else:
                check_output_shapes(graph, new, example_inputs)
                result = Verification(exact=False, unchecked=skipped)
        except VerificationError:
            raise
        except Exception as err:  # the rewritten model does not even run
            raise VerificationError(f"the pruned model fails on the example inputs ({type(err).__name__}: "
                                    f"{err}); the model was left as it was. Please report this model; meanwhile "
                                    f"keep the layer named above with ignored_layers.") from err
    object.__setattr__(new, "surgery_verification", result)
    return new, result
