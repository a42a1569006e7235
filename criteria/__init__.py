"""Importance criteria for structured pruning, usable on their own.

Example:
    >>> import torch.nn as nn, criteria
    >>> conv = nn.Conv2d(3, 8, 3)
    >>> idx = criteria.lowest(criteria.get("l1").score(conv), ratio=0.25)
    >>> len(idx)
    2
"""
from criteria.base import Criterion, GroupView, layer_view, lowest
from criteria.registry import CRITERIA, available, get, register
from criteria.magnitude import L1Norm, L2Norm

__all__ = ["Criterion", "GroupView", "layer_view", "lowest", "CRITERIA", "available", "get",
           "register", "L1Norm", "L2Norm"]
