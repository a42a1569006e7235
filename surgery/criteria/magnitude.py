"""Weight-magnitude criteria: L1 (Li et al. 2017), L2, and BN scale (network slimming)."""
from __future__ import annotations

import torch
import torch.nn as nn

from surgery.core.errors import ArgumentError
from surgery.criteria.base import GroupView, WeightCriterion
from surgery.criteria.registry import register

__all__ = ["L1Norm", "L2Norm", "BNScale", "bn_l1_penalty"]


@register("l1")
class L1Norm(WeightCriterion):
    """Sum of |w| over each channel's weights (Li et al., "Pruning Filters for Efficient
    ConvNets", ICLR 2017): the filters that create the channel by default, or all
    members of its group with ``include="all"``.

    Example:
        >>> import torch.nn as nn
        >>> L1Norm().score(nn.Conv2d(3, 4, 3)).shape
        torch.Size([4])
    """

    def score_part(self, weights: torch.Tensor) -> torch.Tensor:
        return weights.abs().sum(1)


@register("l2")
class L2Norm(WeightCriterion):
    """Euclidean norm of each channel's weights."""

    def score_part(self, weights: torch.Tensor) -> torch.Tensor:
        return weights.pow(2).sum(1).sqrt()


@register("bn_scale")
class BNScale(WeightCriterion):
    """|gamma| of the BatchNorm (or other per-channel affine) layers of the group (Liu et
    al., "Learning Efficient Convolutional Networks through Network Slimming", ICCV
    2017). Train with :func:`bn_l1_penalty` added to the loss to make it sparse.
    """

    def parts(self, view: GroupView) -> list:
        parts = [p for p in view.per_channel if p.shape[1] == 1]
        if not parts:
            layers = ", ".join(view.names.get("producers", []) or [n for ns in view.names.values() for n in ns])
            raise ArgumentError(f"bn_scale: the channels of {layers or 'this layer'} have no BatchNorm (per-channel "
                             f"scale); use another criterion (l1) for them, or add them to ignored_layers")
        return parts

    def score_part(self, weights: torch.Tensor) -> torch.Tensor:
        return weights.abs().sum(1)


def bn_l1_penalty(model: nn.Module, strength: float = 1e-4) -> torch.Tensor:
    """``strength * sum |gamma|`` over the model's BatchNorm layers, to add to the loss.

    Example:
        >>> import torch.nn as nn
        >>> m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        >>> float(bn_l1_penalty(m, 0.5))  # gammas start at 1
        2.0
    """
    gammas = [m.weight.abs().sum() for m in model.modules()
              if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None]
    if not gammas:
        raise ArgumentError("bn_l1_penalty: the model has no affine BatchNorm layers")
    return strength * torch.stack(gammas).sum()
