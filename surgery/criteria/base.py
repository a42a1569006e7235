"""The one interface every criterion implements.

A criterion returns one score per channel; higher means keep. Settings go in
``__init__``; data goes in the call. It scores either a single layer (its output
channels) or a :class:`GroupView` (what the engine passes for a channel group).

Example:
    >>> import torch.nn as nn
    >>> from criteria import L1Norm
    >>> conv = nn.Conv2d(3, 8, 3)
    >>> L1Norm().score(conv).shape
    torch.Size([8])
"""
from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
import torch.nn as nn

from surgery.core.errors import check_ratio, ArgumentError, ArgumentTypeError

__all__ = ["GroupView", "Criterion", "Wrapper", "WeightCriterion", "layer_view", "conv_rows", "lowest", "n_remove",
           "checked_scores"]


class GroupView:
    """The weights of one channel group, arranged per channel.

    Each entry is a ``[channels, k]`` tensor: the slice of one member's weights that
    belongs to each channel of the group. ``producers`` create the channels (conv or
    linear output rows), ``consumers`` read them (input columns of the next layers),
    ``per_channel`` are layers with one parameter per channel (BatchNorm gamma, ...).
    ``names`` and ``modules`` list the layers behind each entry (for data criteria).
    ``loader(kind)`` (optional) builds a part on first access, so criteria that read only
    producers never pay for the consumers' slices. ``index[kind][i]`` maps each position of
    ``modules[kind][i]``'s channel dim to its channel in the group (-1: another group),
    which data criteria use to turn per-position statistics into per-channel scores.
    ``key`` names the group the view shows (the engine's views carry its index; None otherwise).

    Example:
        >>> import torch
        >>> GroupView(producers=[torch.ones(4, 9)]).size
        4
    """
    KINDS = ("producers", "consumers", "per_channel")

    def __init__(self, producers=None, consumers=None, per_channel=None, names=None, modules=None,
                 size=None, loader=None, index=None) -> None:
        self._parts = {"producers": producers, "consumers": consumers, "per_channel": per_channel}
        self.names, self.modules, self.index = names or {}, modules or {}, index or {}
        self._size, self._loader = size, loader
        self.key = None

    def _part(self, kind: str) -> list:
        if self._parts[kind] is None:
            self._parts[kind] = list(self._loader(kind)) if self._loader else []
        return self._parts[kind]

    def layers(self, kind: str) -> list:
        """``(module, index)`` pairs of one member kind, spelled like the parts ("producers",
        "consumers", "per_channel"): each layer behind the view and the map of its channel dim
        onto the group's channels."""
        if kind not in self.KINDS:
            raise ArgumentError(f"GroupView.layers takes one of {', '.join(self.KINDS)}, got {kind!r}")
        return list(zip(self.modules.get(kind, []), self.index.get(kind, [])))

    producers = property(lambda self: self._part("producers"))
    consumers = property(lambda self: self._part("consumers"))
    per_channel = property(lambda self: self._part("per_channel"))

    @property
    def size(self) -> int:
        if self._size is not None:
            return self._size
        for kind in self.KINDS:
            if self._part(kind):
                return self._part(kind)[0].shape[0]
        raise ArgumentError("empty GroupView: give it at least one producer, consumer or per-channel slice")


class Criterion:
    """Base class. Subclasses implement :meth:`score_group`.

    Flags tell what the criterion needs: ``needs_data`` (calibration batches),
    ``needs_labels`` and ``needs_gradients``; ``decides_count`` means its ``select`` may
    return fewer channels than asked (the data decides how many go; the count caps it).
    """
    name: ClassVar[str] = ""
    needs_data: ClassVar[bool] = False
    needs_labels: ClassVar[bool] = False
    needs_gradients: ClassVar[bool] = False
    decides_count: ClassVar[bool] = False

    def calibrate(self, model: nn.Module, data, **options) -> "Criterion":
        """Collect statistics from data (data criteria); weight criteria need none."""
        if self.needs_data:
            raise NotImplementedError(f"{type(self).__name__} must implement calibrate()")
        return self

    def view_of(self, target: nn.Module | GroupView | torch.Tensor) -> GroupView:
        """What ``score``, ``select`` and ``prune_indices`` see for a layer, tensor or group: a
        layer's output channels by default (criteria that score inputs override this)."""
        return target if isinstance(target, GroupView) else layer_view(target)

    def score(self, target: nn.Module | GroupView | torch.Tensor) -> torch.Tensor:
        """Scores per channel of a layer (see :meth:`view_of`), weight tensor or group."""
        view = self.view_of(target)
        with torch.no_grad():
            return self.score_group(view).detach().float().cpu()

    def score_group(self, view: GroupView) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement score_group(view)")

    def select(self, target: nn.Module | GroupView | torch.Tensor, n: int) -> torch.Tensor:
        """Indices of the ``n`` channels to remove (default: the ``n`` lowest scores).

        Selection criteria such as k-means override this; the engine always calls it.
        """
        view = self.view_of(target)
        scores = checked_scores(self, view, self.score(view))
        if not 0 <= n < len(scores):
            raise ArgumentError(f"can remove between 0 and {len(scores) - 1} of {len(scores)} channels, not {n}")
        return torch.argsort(scores, stable=True)[:n].sort().values

    def prune_indices(self, target: nn.Module | GroupView | torch.Tensor, ratio: float) -> torch.Tensor:
        """Indices of the ``floor(ratio * n)`` channels to remove from a layer or group.

        Example:
            >>> import torch.nn as nn
            >>> from criteria import L1Norm
            >>> len(L1Norm().prune_indices(nn.Conv2d(3, 10, 3), 0.3))
            3
        """
        view = self.view_of(target)
        return self.select(view, n_remove(view.size, ratio))

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith(("_", "needs_")))
        return f"{type(self).__name__}({opts})"


class Wrapper(Criterion):
    """Base of criteria built around another one (normalisation, k-means around a base).

    Every flag, calibration and (unless overridden) selection passes through to ``base``,
    so a wrapper can never drop what the wrapped criterion needs or decides.
    """

    def __init__(self, base: Criterion) -> None:
        if not isinstance(base, Criterion):
            raise ArgumentTypeError(f"{type(self).__name__} wraps a criteria.Criterion, got {type(base).__name__}")
        self.base = base

    needs_data = property(lambda self: self.base.needs_data)
    needs_labels = property(lambda self: self.base.needs_labels)
    needs_gradients = property(lambda self: self.base.needs_gradients)
    decides_count = property(lambda self: self.base.decides_count)

    def calibrate(self, model: nn.Module, data, **options) -> "Criterion":
        self.base.calibrate(model, data, **options)
        return self

    def score_group(self, view: GroupView) -> torch.Tensor:
        return self.base.score_group(view)

    def select(self, target, n: int) -> torch.Tensor:
        return self.base.select(target, n)

    def view_of(self, target) -> GroupView:
        return self.base.view_of(target)


def layer_view(target: nn.Module | torch.Tensor) -> GroupView:
    """A GroupView of one layer: its output channels as producers.

    Accepts a weight tensor (dim 0 = output channels), a layer with a ``weight``
    (Conv: filters, Linear: rows, BatchNorm: gamma as a per-channel entry).
    """
    if isinstance(target, torch.Tensor):
        return GroupView(producers=[target.reshape(target.shape[0], -1)])
    weight = getattr(target, "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise ArgumentTypeError(f"cannot score {type(target).__name__}: it has no weight tensor; pass "
                        f"a layer with a weight, a weight tensor or a criteria.GroupView")
    if isinstance(target, nn.modules.conv._ConvNd):
        kind, part = "producers", dict(producers=[conv_rows(target, "out")])
    elif weight.dim() == 1:
        kind, part = "per_channel", dict(per_channel=[weight.reshape(-1, 1)])
    else:
        kind, part = "producers", dict(producers=[weight.reshape(weight.shape[0], -1)])
    n = next(iter(part.values()))[0].shape[0]
    return GroupView(**part, modules={kind: [target]}, index={kind: [np.arange(n)]})


def conv_rows(conv: nn.Module, side: str) -> torch.Tensor:
    """``[channels, k]``: the weights of a (grouped, transposed) conv that belong to each of
    its output (``side="out"``) or input (``"in"``) channels.

    Example:
        >>> conv_rows(nn.ConvTranspose2d(4, 6, 3, groups=2), "out").shape
        torch.Size([6, 18])
    """
    w, g = conv.weight, conv.groups
    transposed = isinstance(conv, nn.modules.conv._ConvTransposeNd)
    a, b = w.shape[0], w.shape[1]
    grid = w.reshape(g, a // g, b, -1)  # (groups, rows per group, cols, k)
    if (side == "out") != transposed:  # the weight's rows are the wanted side
        return grid.reshape(a, -1)
    return grid.permute(0, 2, 1, 3).reshape(g * b, -1)


class WeightCriterion(Criterion):
    """A criterion computed per member from weights, then reduced over the members.

    ``include``: ``"producers"`` (the layers that create the channel; per-channel layers
    if there are none) or ``"all"`` (producers, consumers and per-channel layers).
    ``reduce``: how member scores combine: ``"sum"``, ``"mean"`` or ``"max"``.
    """
    _REDUCE = {"sum": lambda s: s.sum(0), "mean": lambda s: s.mean(0), "max": lambda s: s.max(0).values}

    def __init__(self, include: str = "producers", reduce: str = "sum") -> None:
        if include not in ("producers", "all"):
            raise ArgumentError(f"include must be 'producers' or 'all', got {include!r}")
        if reduce not in self._REDUCE:
            raise ArgumentError(f"reduce must be one of {sorted(self._REDUCE)}, got {reduce!r}")
        self.include, self.reduce = include, reduce

    def parts(self, view: GroupView) -> list:
        parts = view.producers or view.per_channel
        if self.include == "all":
            parts = view.producers + view.consumers + view.per_channel
        if not parts:
            raise ArgumentError(f"{type(self).__name__}: the group has no weights to score")
        return parts

    def score_part(self, weights: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def score_group(self, view: GroupView) -> torch.Tensor:
        scores = torch.stack([self.score_part(_real(p)) for p in self.parts(view)])
        return self._REDUCE[self.reduce](scores)


def checked_scores(criterion: Criterion, view: GroupView, scores: torch.Tensor) -> torch.Tensor:
    """``scores`` when they are one finite number per channel of ``view``; otherwise an error
    naming the criterion and the layers (NaN or inf would pick channels by NaN ordering)."""
    name = _name(criterion)
    if not isinstance(scores, torch.Tensor) or scores.shape != (view.size,):
        shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ArgumentError(f"{name} returned scores of shape {shape}; expected one score per channel ({view.size})")
    bad = ~torch.isfinite(scores.detach())
    if bool(bad.any()):
        layers = ", ".join(n for ns in view.names.values() for n in ns)[:200] or "the given layer"
        where = torch.nonzero(bad).flatten().tolist()
        raise ArgumentError(f"criterion {name} returned non-finite scores (NaN or inf) for channels {where[:16]} of "
                            f"{layers}: channels cannot be ranked by them. Check the criterion (and its calibration "
                            f"data), or the layer's weights for NaN/inf")
    return scores


def _name(criterion: Criterion) -> str:
    """``Normalized(Taylor)`` for a wrapper, the criterion's own name otherwise."""
    base = getattr(criterion, "base", None)
    own = getattr(criterion, "name", None) or type(criterion).__name__
    return f"{type(criterion).__name__}({_name(base)})" if base is not None else own


def _real(t: torch.Tensor) -> torch.Tensor:
    """float32/float64 as they are; half precision and integers in float32."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def n_remove(n: int, ratio: float) -> int:
    """``floor(ratio * n)``, keeping at least one channel."""
    ratio = check_ratio(ratio)
    return max(0, min(int(ratio * n + 1e-9), n - 1))


def lowest(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """Indices of the ``floor(ratio * n)`` lowest scores (at least one channel kept).

    Example:
        >>> lowest(torch.tensor([3.0, 1.0, 2.0, 5.0]), 0.5).tolist()
        [1, 2]
    """
    k = n_remove(len(scores), ratio)
    order = torch.argsort(scores.detach().float().cpu(), stable=True)
    return order[:k].sort().values
