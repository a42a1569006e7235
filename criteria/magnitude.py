"""Weight-magnitude criteria: L1 (Li et al. 2017) and L2."""
from __future__ import annotations

import torch

from criteria.base import Criterion, GroupView
from criteria.registry import register

__all__ = ["L1Norm", "L2Norm"]


def _parts(view: GroupView, include: str) -> list:
    if include == "producers":
        parts = view.producers or view.per_channel
    elif include == "all":
        parts = view.producers + view.consumers + view.per_channel
    else:
        raise ValueError(f"include must be 'producers' or 'all', got {include!r}")
    if not parts:
        raise ValueError("the group has no weights to score (no producers or per-channel layers)")
    return parts


@register("l1")
class L1Norm(Criterion):
    """Sum of |w| over each channel's weights (Li et al., "Pruning Filters for Efficient
    ConvNets", 2017). ``include="producers"`` scores the filters that create the channel;
    ``"all"`` adds the consumers' input kernels and per-channel parameters.
    """

    def __init__(self, include: str = "producers") -> None:
        self.include = include

    def score_group(self, view: GroupView) -> torch.Tensor:
        return sum(p.abs().sum(1) for p in _parts(view, self.include))


@register("l2")
class L2Norm(Criterion):
    """Euclidean norm of each channel's weights, over the same parts as :class:`L1Norm`."""

    def __init__(self, include: str = "producers") -> None:
        self.include = include

    def score_group(self, view: GroupView) -> torch.Tensor:
        return sum(p.pow(2).sum(1) for p in _parts(view, self.include)).sqrt()
