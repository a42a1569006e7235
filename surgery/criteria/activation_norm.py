"""Activation norms at the inputs of the layers that read a channel (Minitron, FLAP).

``statistic="mean_square"`` (Minitron, Muralidharan et al. 2024): the mean of x_c^2 over
samples and positions at each consumer's input. A head's score is the sum over its
channels: the mean squared norm of the head's output, which is what the output projection
reads. An MLP neuron is scored at the down projection's input, the residual (hidden)
channels at the normalised inputs of every layer that reads the stream.

``statistic="fluctuation"`` (FLAP, An et al. 2024, its "WIFV" metric): the sample variance
of x_c over samples and positions times the squared norm of the consumer's weight column,
||W[:, c]||_2^2: a channel whose input hardly varies can be replaced by a constant.
"""
from __future__ import annotations

import torch

from surgery.core.errors import ArgumentError
from surgery.criteria.base import GroupView
from surgery.criteria.data import InputCriterion
from surgery.criteria.registry import register

__all__ = ["ActivationNorm", "FLAP"]


@register("activation_norm")
class ActivationNorm(InputCriterion):
    """Per channel, summed over the group's consumers (a residual stream has many):
    ``mean_square`` E[x_c^2], or ``fluctuation`` Var[x_c] * ||W[:, c]||_2^2.

    Example:
        >>> import torch, torch.nn as nn
        >>> from criteria import ActivationNorm
        >>> mlp = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 4))
        >>> crit = ActivationNorm().calibrate(mlp, [torch.randn(8, 4)])
        >>> crit.score(mlp[2]).shape  # one score per input channel of the reading layer
        torch.Size([6])
    """
    STATISTICS = ("mean_square", "fluctuation")

    def __init__(self, statistic: str = "mean_square") -> None:
        super().__init__()
        if statistic not in self.STATISTICS:
            raise ArgumentError(f"statistic must be one of {self.STATISTICS}, got {statistic!r}")
        self.statistic = statistic

    def observe_input(self, module, x):
        x = x.double()
        return {"sum": x.sum((0, 2)), "sumsq": (x ** 2).sum((0, 2)),
                "count": torch.tensor(float(x.shape[0] * x.shape[2]), dtype=torch.float64)}

    def score_group(self, view: GroupView) -> torch.Tensor:
        total = torch.zeros(view.size, dtype=torch.float64)
        for st, weights in self.consumer_stats(view):
            n = st["count"]
            if self.statistic == "mean_square":
                total += st["sumsq"] / n
            else:
                var = (st["sumsq"] - st["sum"] ** 2 / n) / (n - 1).clamp_min(1.0)
                total += var.clamp_min(0.0) * torch.linalg.vector_norm(weights, 2, dim=1, dtype=torch.float64).cpu() ** 2
        return total


@register("flap")
class FLAP(ActivationNorm):
    """:class:`ActivationNorm` with ``statistic="fluctuation"`` (FLAP's WIFV metric)."""

    def __init__(self, statistic: str = "fluctuation") -> None:
        super().__init__(statistic)
