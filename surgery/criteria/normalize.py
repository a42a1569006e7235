"""Normalisation of scores for ranking channels across groups (global pruning)."""
from __future__ import annotations

import torch

from surgery.core.errors import ArgumentError
from surgery.criteria.base import Criterion, GroupView, Wrapper

__all__ = ["Normalized", "normalize_scores", "lamp"]

METHODS = ("none", "mean", "max", "lamp")


def lamp(scores: torch.Tensor) -> torch.Tensor:
    """LAMP (Lee et al., ICLR 2021) on channel scores: each score divided by the sum of
    the scores at least as large. The largest becomes exactly 1. The paper applies it
    to squared weight magnitudes (use ``l2`` scores squared for that form).

    Example:
        >>> lamp(torch.tensor([1.0, 3.0, 2.0])).tolist()
        [0.16666666666666666, 1.0, 0.4]
    """
    s = scores.double()
    order = torch.argsort(s, stable=True)
    tail = torch.flip(torch.cumsum(torch.flip(s[order], [0]), 0), [0])
    out = torch.empty_like(s)
    out[order] = s[order] / tail.clamp_min(torch.finfo(s.dtype).tiny)
    return out


def normalize_scores(scores: torch.Tensor, method: str) -> torch.Tensor:
    if method == "none":
        return scores
    if method == "mean":
        return scores / scores.mean().clamp_min(1e-12)
    if method == "max":
        return scores / scores.max().clamp_min(1e-12)
    if method == "lamp":
        return lamp(scores)
    raise ArgumentError(f"normalize must be one of {METHODS}, got {method!r}")


class Normalized(Wrapper):
    """Wraps any criterion and normalises its scores per group (``none``, ``mean``, ``max``,
    ``lamp``), so scores from different groups can be ranked together.

    Example:
        >>> import torch.nn as nn
        >>> from criteria import L1Norm
        >>> float(Normalized(L1Norm(), "max").score(nn.Conv2d(3, 4, 3)).max())
        1.0
    """

    def __init__(self, base: Criterion, method: str = "mean") -> None:
        if method not in METHODS:
            raise ArgumentError(f"normalize must be one of {METHODS}, got {method!r}")
        super().__init__(base)
        self.method = method

    def score_group(self, view: GroupView) -> torch.Tensor:
        return normalize_scores(self.base.score_group(view), self.method)
