"""FPGM: filter pruning via geometric median (He et al., CVPR 2019)."""
from __future__ import annotations

import torch

from surgery.criteria.base import WeightCriterion
from surgery.criteria.registry import register

__all__ = ["FPGM"]


@register("fpgm")
class FPGM(WeightCriterion):
    """Sum of Euclidean distances from each filter to all others (raw flattened weights).

    The filters nearest the geometric median score lowest: the others can replace them.
    Scaling every filter by the same factor does not change the ranking.
    """

    def score_part(self, weights: torch.Tensor) -> torch.Tensor:
        return torch.cdist(weights[None], weights[None])[0].sum(1)
