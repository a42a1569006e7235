"""WANDA, structured: activation norm of a channel times the weights that read it."""
from __future__ import annotations

import torch

from surgery.criteria.base import GroupView
from surgery.criteria.data import InputCriterion
from surgery.criteria.registry import register

__all__ = ["Wanda"]


@register("wanda")
class Wanda(InputCriterion):
    """Sun et al. 2023, per channel: ||X_c||_2 over all samples and positions of the input
    of each consumer, times the sum of |W_next[:, c]| of that consumer, summed over the
    group's consumers (residual and concat groups have several).

    Standalone, ``score(layer)`` scores the layer's *input* channels (what WANDA measures);
    remove them with ``surgery.layers.remove_kernels``.
    """

    def observe_input(self, module, x):
        return {"sumsq": (x.double() ** 2).sum((0, 2))}

    def score_group(self, view: GroupView) -> torch.Tensor:
        total = torch.zeros(view.size, dtype=torch.float64)
        for st, weights in self.consumer_stats(view):
            total += st["sumsq"].sqrt() * torch.linalg.vector_norm(weights, 1, dim=1, dtype=torch.float64).cpu()
        return total
