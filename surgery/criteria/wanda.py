"""WANDA, structured: activation norm of a channel times the weights that read it."""
from __future__ import annotations

import torch
import torch.nn as nn

from surgery.criteria.base import GroupView
from surgery.criteria.data import DataCriterion, per_unit
from surgery.criteria.registry import register

__all__ = ["Wanda"]


@register("wanda")
class Wanda(DataCriterion):
    """Sun et al. 2023, per channel: ||X_c||_2 over all samples and positions of the input
    of each consumer, times the sum of |W_next[:, c]| of that consumer, summed over the
    group's consumers (residual and concat groups have several).

    Standalone, ``score(layer)`` scores the layer's *input* channels (what WANDA measures);
    remove them with ``surgery.layers.remove_kernels``.
    """
    site = "input"
    hook_outputs = False

    def observe_input(self, module, x):
        return {"sumsq": (x.double() ** 2).sum((0, 2))}

    def score_group(self, view: GroupView) -> torch.Tensor:
        total = torch.zeros(view.size, dtype=torch.float64)
        for (module, index), weights in zip(self.sites(view), view.consumers):
            st = self.stats_of(module)
            if st is None:
                raise ValueError(f"wanda: no input statistics for {type(module).__name__}; calibrate first")
            norms = per_unit(st["sumsq"], index, view.size).sqrt()
            total += norms * weights.double().abs().sum(1).cpu()
        if not view.consumers:
            raise ValueError("wanda: this group has no consuming layer (its channels reach the output)")
        return total

    def view_of(self, target):
        """A layer is seen through its *input* channels (what WANDA measures)."""
        if not isinstance(target, (nn.Linear, nn.modules.conv._ConvNd)):
            return super().view_of(target)
        if getattr(target, "groups", 1) != 1:
            raise ValueError(f"wanda on a single {type(target).__name__} supports groups=1 layers; "
                             f"use it through surgery.prune for grouped convs")
        w = target.weight.transpose(0, 1).reshape(target.weight.shape[1], -1)
        return GroupView(consumers=[w], modules={"consumer": [target]},
                         index={"consumer": [list(range(w.shape[0]))]})
