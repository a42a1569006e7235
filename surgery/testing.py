"""``surgery.testing``: the exactness oracle, for tests of rules, handlers and models.

Is a pruned model the original with dropped inputs zeroed?

Removing channels is exactly equivalent to keeping them and zeroing the weight
slices of the layers that read them (conv/linear input columns; a depthwise or
grouped conv's whole removed groups), as long as no normalisation across channels
(LayerNorm, GroupNorm over several groups) sees them. The oracle finds which slices
the pruned model kept by *matching weight values*, so it does not trust the engine's
bookkeeping: use it with random float64 weights, where every value is unique.

Example:
    >>> import torch, surgery
    >>> from models import create
    >>> m = create("resnet20").double().eval()
    >>> _ = surgery.testing.randomize(m, seed=0)
    >>> x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    >>> p = surgery.prune(m, x, ratio=0.5)
    >>> surgery.testing.max_error(m, p, x) < 1e-9
    True
"""
from __future__ import annotations

import contextlib
import copy
from typing import Any, Iterator

import torch
import torch.nn as nn

from surgery.core.errors import ArgumentError
from surgery.core.inputs import as_inputs, evaluating, flat_tensors
from surgery.core.metrics import count_params
from surgery.rewrite import verify

__all__ = ["randomize", "kept_indices", "zeroed_reference", "max_error", "assert_exact", "unmatched_detections",
           "planted_bug"]

_CONV = nn.modules.conv._ConvNd
_CONVT = nn.modules.conv._ConvTransposeNd
_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and random normalisation statistics, so nothing is trivially zero."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            for name, p in m.named_parameters(recurse=False):
                fan_in = p[0].numel() if p.dim() > 1 else 4
                p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) / fan_in ** 0.5)
            if isinstance(m, nn.modules.batchnorm._NormBase) and m.running_mean is not None:
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return model


def kept_along(original: torch.Tensor, pruned: torch.Tensor) -> list:
    """For every dim, the indices of ``original`` that survive in ``pruned``.

    Works by locating values, so it needs unique values (random float64 weights).
    """
    w, p = original.detach(), pruned.detach()
    hits = (w == p.reshape(-1)[0]).nonzero()
    if len(hits) != 1:
        raise ArgumentError("weights are not unique: randomize the model in float64 first")
    origin = hits[0].tolist()
    kept = []
    for d in range(w.dim()):
        line = w[tuple(slice(None) if k == d else origin[k] for k in range(w.dim()))]
        where = {v: i for i, v in enumerate(line.tolist())}
        p_line = p[tuple(slice(None) if k == d else 0 for k in range(p.dim()))]
        kept.append([where[v] for v in p_line.tolist()])
    return kept


def kept_indices(original: torch.Tensor, pruned: torch.Tensor) -> tuple[list, list]:
    """Rows and columns (dims 0 and 1) of a layer weight that survive in ``pruned``."""
    kept = kept_along(original, pruned)
    return kept[0], kept[1]


def zeroed_reference(original: nn.Module, pruned: nn.Module) -> nn.Module:
    """A copy of ``original`` with every slice that ``pruned`` dropped set to zero: the input
    columns of convs and linears, their removed output rows and biases, and the dropped
    slices of parameters read directly."""
    ref = copy.deepcopy(original)
    kept = dict(pruned.named_modules())
    with torch.no_grad():
        for name, m in ref.named_modules():
            p = kept.get(name)
            if isinstance(m, (_CONV, nn.Linear)) and p is not None and p.weight.shape != m.weight.shape:
                _zero_inputs(m, p)
            elif p is not None and not isinstance(m, _NORMS + (nn.Embedding,)):
                _zero_raw_params(m, p)
    return ref


def _zero_raw_params(m: nn.Module, p: nn.Module) -> None:
    """Parameters read directly in forward (``x @ W``, layer scales): zero dropped slices."""
    for name, w in m.named_parameters(recurse=False):
        q = getattr(p, name, None)
        if isinstance(q, torch.Tensor) and q.shape != w.shape:
            for d, keep in enumerate(kept_along(w, q)):
                drop = _others(w.shape[d], keep)
                if drop:
                    w.index_fill_(d, torch.tensor(drop), 0.0)


def _zero_inputs(m: nn.Module, p: nn.Module) -> None:
    rows, cols = kept_indices(m.weight, p.weight)
    w = m.weight
    if isinstance(m, _CONVT):  # [cin, cout/g, ...]: rows are inputs
        w[_others(w.shape[0], rows)] = 0
        return
    w[:, _others(w.shape[1], cols)] = 0
    gone = _others(w.shape[0], rows)  # removed outputs are zero where they are made, so ops
    w[gone] = 0                       # without a layer that read them (q.k, rotary) see no trace
    if m.bias is not None:
        m.bias[gone] = 0


def _others(n: int, keep: list) -> list:
    s = set(keep)
    return [i for i in range(n) if i not in s]


def max_error(original: nn.Module, pruned: nn.Module, example_inputs: Any) -> float:
    """Largest difference between ``pruned`` and the zeroed original (eval mode), relative
    to the largest output magnitude of the reference."""
    ref = zeroed_reference(original, pruned)
    args, kwargs = as_inputs(example_inputs)
    with evaluating(ref, pruned), torch.no_grad():
        a, b = flat_tensors(ref(*args, **kwargs)), flat_tensors(pruned(*args, **kwargs))
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b)):
        return float("inf")
    scale = max(float(x.abs().max()) for x in a) or 1.0
    return max(float((x - y).abs().max()) for x, y in zip(a, b)) / scale


def assert_exact(original: nn.Module, pruned: nn.Module, example_inputs: Any, *, tol: float = 1e-10,
                 shrinks: bool = True) -> float:
    """The one exactness check of the test suite: ``pruned`` equals the zeroed original
    within ``tol`` (relative), and, with ``shrinks``, it has fewer parameters (so a rewrite
    that removed nothing cannot pass). Returns the error.

    Example:
        >>> import torch, surgery
        >>> from models import create
        >>> m = randomize(create("resnet20").double().eval())
        >>> x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
        >>> assert_exact(m, surgery.prune(m, x, ratio=0.5), x) < 1e-10
        True
    """
    if shrinks and count_params(pruned) >= count_params(original):
        raise AssertionError(f"nothing was removed: {count_params(pruned):,} parameters, "
                             f"{count_params(original):,} before")
    err = max_error(original, pruned, example_inputs)
    if not err < tol:
        raise AssertionError(f"pruned output differs from the zeroed original by {err:.3g} (tolerance {tol:g})")
    return err


def unmatched_detections(want: dict, got: dict, *, box_tol: float = 0.05, score_tol: float = 1e-5) -> int:
    """How many detections of ``want`` have no equal one in ``got``, in any order.

    Both are a detector's output for one image: ``{"boxes": (N, 4), "scores": (N,),
    "labels": (N,)}`` as tensors or numpy arrays (an onnxruntime run gives arrays). Two
    runtimes (torch and onnxruntime, say) round differently, and detections whose scores
    tie within that rounding come out in a different order; comparing position by position
    would call that a difference. Each detection of ``want`` is matched to an unused one of
    ``got`` with the same label, a score within ``score_tol`` and every box corner within
    ``box_tol`` (pixels). A count of 0 with equal lengths means the same detections.

    Example:
        >>> import torch
        >>> a = {"boxes": torch.tensor([[0., 0, 4, 4], [1, 1, 5, 5]]), "scores": torch.tensor([.5, .5]),
        ...      "labels": torch.tensor([1, 1])}
        >>> b = {k: v.flip(0) for k, v in a.items()}
        >>> unmatched_detections(a, b)
        0
    """
    import numpy as np
    arrays = [[np.asarray(d[k].detach() if isinstance(d[k], torch.Tensor) else d[k], dtype=np.float64)
               for k in ("boxes", "scores", "labels")] for d in (want, got)]
    (boxes, scores, labels), (other_boxes, other_scores, other_labels) = arrays
    free = np.ones(len(other_scores), dtype=bool)
    missing = 0
    for box, score, label in zip(boxes, scores, labels):
        near = (free & (other_labels == label) & (np.abs(other_scores - score) <= score_tol)
                & (np.abs(other_boxes - box).max(axis=1, initial=0.0) <= box_tol))
        hits = np.flatnonzero(near)
        if len(hits):
            free[hits[np.abs(other_boxes[hits] - box).max(axis=1).argmin()]] = False
        else:
            missing += 1
    return missing


@contextlib.contextmanager
def planted_bug(layer: str) -> Iterator[None]:
    """Inside the block, every rewrite has a wiring bug: two kept input columns of ``layer``
    (a qualified name) change places. For measuring what verification catches
    (``benchmarks/verification_power.py``); never use it outside a test.

    Example:
        >>> import torch, surgery
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2)).double()
        >>> with planted_bug("1"):
        ...     surgery.prune(net, torch.randn(3, 4, dtype=torch.float64), ratio=0.5)
        Traceback (most recent call last):
        ...
        surgery.core.errors.VerificationError: ...
    """
    rewrite = verify.rewrite

    def wrong(*args: Any, **kwargs: Any) -> nn.Module:
        new = rewrite(*args, **kwargs)
        weight = new.get_submodule(layer).weight
        with torch.no_grad():
            weight[:, [0, 1]] = weight[:, [1, 0]].clone()
        return new

    verify.rewrite = wrong
    try:
        yield
    finally:
        verify.rewrite = rewrite
