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

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn as nn

__all__ = ["GroupView", "Criterion", "layer_view", "lowest"]


@dataclass
class GroupView:
    """The weights of one channel group, arranged per channel.

    Each entry is a ``[channels, k]`` tensor: the slice of one member's weights that
    belongs to each channel of the group. ``producers`` create the channels (conv or
    linear output rows), ``consumers`` read them (input columns of the next layers),
    ``per_channel`` are layers with one parameter per channel (BatchNorm gamma, ...).
    ``names`` and ``modules`` list the layers behind each entry (for data criteria).
    """
    producers: list = field(default_factory=list)
    consumers: list = field(default_factory=list)
    per_channel: list = field(default_factory=list)
    names: dict = field(default_factory=dict)   # kind -> list of layer names
    modules: dict = field(default_factory=dict)  # kind -> list of nn.Module

    @property
    def size(self) -> int:
        for part in (self.producers, self.consumers, self.per_channel):
            if part:
                return part[0].shape[0]
        raise ValueError("empty GroupView: give it at least one producer, consumer or per-channel slice")


class Criterion:
    """Base class. Subclasses implement :meth:`score_group`.

    Flags tell what the criterion needs: ``needs_data`` (calibration batches),
    ``needs_labels`` and ``needs_gradients``.
    """
    name: ClassVar[str] = ""
    needs_data: ClassVar[bool] = False
    needs_labels: ClassVar[bool] = False
    needs_gradients: ClassVar[bool] = False

    def score(self, target: nn.Module | GroupView | torch.Tensor) -> torch.Tensor:
        """Scores per output channel of a layer or weight tensor, or per channel of a group."""
        view = target if isinstance(target, GroupView) else layer_view(target)
        with torch.no_grad():
            return self.score_group(view).detach().float().cpu()

    def score_group(self, view: GroupView) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement score_group(view)")

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({opts})"


def layer_view(target: nn.Module | torch.Tensor) -> GroupView:
    """A GroupView of one layer: its output channels as producers.

    Accepts a weight tensor (dim 0 = output channels), a layer with a ``weight``
    (Conv: filters, Linear: rows, BatchNorm: gamma as a per-channel entry).
    """
    if isinstance(target, torch.Tensor):
        return GroupView(producers=[target.reshape(target.shape[0], -1)])
    weight = getattr(target, "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"cannot score {type(target).__name__}: it has no weight tensor; pass "
                        f"a layer with a weight, a weight tensor or a criteria.GroupView")
    if isinstance(target, nn.modules.conv._ConvTransposeNd):
        g = target.groups
        w = weight.reshape(g, weight.shape[0] // g, weight.shape[1], -1).permute(0, 2, 1, 3)
        return GroupView(producers=[w.reshape(g * weight.shape[1], -1)], modules={"producer": [target]})
    if weight.dim() == 1:
        return GroupView(per_channel=[weight.reshape(-1, 1)], modules={"per_channel": [target]})
    return GroupView(producers=[weight.reshape(weight.shape[0], -1)], modules={"producer": [target]})


def lowest(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """Indices of the ``floor(ratio * n)`` lowest scores (at least one channel kept).

    Example:
        >>> lowest(torch.tensor([3.0, 1.0, 2.0, 5.0]), 0.5).tolist()
        [1, 2]
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"ratio must be in [0, 1), got {ratio}")
    n = len(scores)
    k = min(int(ratio * n + 1e-9), n - 1)
    order = torch.argsort(scores.detach().float().cpu(), stable=True)
    return order[:k].sort().values
