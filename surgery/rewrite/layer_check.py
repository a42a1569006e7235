"""Layer by layer: a fingerprint of each plain conv's and linear's output, in both models.

Comparing the model's outputs sees a wrong channel only through what the rest of the network
makes of it: a ReLU can zero it, a large skip connection can drown it. So verification also
compares the layers themselves. For every call of a plain ``nn.Conv*d`` or ``nn.Linear`` (the
layers whose :meth:`surgery.extend.Handler.channel_dims` are known; which ones:
:func:`surgery.rewrite.reference.watched_layers`), the masked reference and
the pruned model each record a *fingerprint* of the output: one number per kept output
channel, a weighted sum of that channel's values with random weights from a fixed seed (the
same for both models, so equal outputs give equal fingerprints up to rounding, and a wrong
channel, a swapped column or a shifted window changes them), with the same sum of magnitudes
as its scale: differences are relative to what rounding that sum can cost. Fingerprints cost
a pass over each output and a few numbers per channel of memory, however large the inputs.

Example:
    >>> import torch
    >>> x = torch.randn(2, 6, 5, 5)
    >>> keep = torch.tensor([0, 2, 3])
    >>> a = fingerprint(x, 1, keep)
    >>> b = fingerprint(x.index_select(1, keep), 1, None)
    >>> a.shape, bool(torch.equal(a, b))
    (torch.Size([2, 3]), True)
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn as nn

__all__ = ["fingerprint", "recording", "layer_error", "SEED"]

SEED = 0x5EED


def fingerprint(t: torch.Tensor, dim: int, keep: torch.Tensor | None = None,
                weights: dict | None = None, scale: bool = True) -> torch.Tensor:
    """``[2, channels]`` for ``t``'s channels along ``dim`` (only ``keep``'s when given): row 0
    sums each channel's values with weights drawn from :data:`SEED` (one weight per position of
    the other dims; ``weights`` caches them by count), row 1 sums their magnitudes the same way
    (``|w| . |x|``: the scale of that sum's rounding, which differences are measured against;
    only with ``scale``, else ``[1, channels]``)."""
    t = t.detach()
    if keep is not None:
        t = t.index_select(dim, keep.to(t.device))
    dim = dim % t.dim()
    before, channels = t.shape[:dim].numel(), t.shape[dim]
    t = t.reshape(before, channels, -1)  # (dims before, channels, dims after): a view, no copy
    key = (before, t.shape[2], t.dtype, t.device)
    w = (weights or {}).get(key)
    if w is None:
        w = torch.randn(before, t.shape[2], generator=torch.Generator().manual_seed(SEED), dtype=torch.float64)
        w = w.to(t.dtype).to(t.device)
        if weights is not None:
            weights[key] = w
    sums = [torch.einsum("bcs,bs->c", t, w)]
    if scale:
        sums.append(torch.einsum("bcs,bs->c", t.abs(), w.abs()))
    return torch.stack(sums)


@contextlib.contextmanager
def recording(model: nn.Module, layers: dict, scale: bool = True) -> Iterator[dict]:
    """Fingerprints of the outputs of ``layers`` (``{name: (out_dim, keep)}``, ``keep`` a long
    tensor or None) in ``{name: [one per call]}``, filled by forward hooks while the block
    runs (with their scales: ``scale``, needed on the reference's side only); the hooks are
    removed after it."""
    store: dict = {}
    weights: dict = {}

    def hook_for(name: str, dim: int, keep: torch.Tensor | None):
        def hook(module, args, output):
            if isinstance(output, torch.Tensor) and output.is_floating_point():
                store.setdefault(name, []).append(fingerprint(output, dim, keep, weights, scale))
        return hook

    handles = [model.get_submodule(name).register_forward_hook(hook_for(name, dim, keep))
               for name, (dim, keep) in layers.items()]
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


def layer_error(reference: dict, pruned: dict, tol: float) -> tuple[float, str | None, int]:
    """``(error, layer, compared)``: the largest difference between the fingerprints of a layer
    call in both stores, relative to the largest finite one of its reference call; the first
    layer (in the reference's order of first calls) whose difference is over ``tol`` (None if
    none); how many layer calls were compared. A layer called a different number of times
    in the two models is not compared (the model's outputs still are). The difference is inf
    where the shapes differ, or where the pruned model is not finite and the reference is."""
    worst, first, compared = 0.0, None, 0
    for name, refs in reference.items():
        news = pruned.get(name, [])
        if len(news) != len(refs):
            continue
        for a, b in zip(refs, news):
            error = _call_error(a, b)
            compared += error is not None
            if error is not None and error > worst:
                worst = error
            if error is not None and not error <= tol and first is None:
                first = name
    return worst, first, compared


def _call_error(a: torch.Tensor, b: torch.Tensor) -> float | None:
    """The difference of two fingerprints of one call (``b``'s scale row may be absent),
    relative to the largest magnitude sum of the reference's finite channels (None: nothing
    finite to compare)."""
    if a.shape[1:] != b.shape[1:]:
        return float("inf")
    finite = torch.isfinite(a).all(0)
    if not bool(finite.any()):
        return None
    a, b = a[:, finite], b[0, finite]
    if not bool(torch.isfinite(b).all()):
        return float("inf")
    return float((a[0] - b).abs().max()) / (float(a[1].max()) or 1.0)
