"""Importance criteria for structured pruning, usable on their own (no engine needed).

A criterion returns one score per channel (higher means keep): ``criterion.score(layer)``
scores a layer's output channels; the engine passes a :class:`GroupView` for a group.

Example:
    >>> import torch.nn as nn, criteria
    >>> conv = nn.Conv2d(3, 8, 3)
    >>> idx = criteria.lowest(criteria.get("l1").score(conv), ratio=0.25)
    >>> len(idx)
    2
"""
from criteria.base import Criterion, GroupView, WeightCriterion, layer_view, lowest, n_remove
from criteria.registry import CRITERIA, available, get, register
from criteria.magnitude import BNScale, L1Norm, L2Norm, bn_l1_penalty
from criteria.fpgm import FPGM
from criteria.randomized import Random
from criteria.normalize import Normalized, lamp, normalize_scores
from criteria.kmeans import KMeansCriterion, cluster_filters, kmeans_removal
from criteria.data import DataCriterion
from criteria.activations import APoZ, Coverage, HRank, Taylor
from criteria.gradients import Fisher, KTaylor, TaylorWeight
from criteria.wanda import Wanda
from criteria.ocap import OCAP
from criteria.lrp import LRP

__all__ = ["Criterion", "GroupView", "WeightCriterion", "layer_view", "lowest", "n_remove", "CRITERIA",
           "available", "get", "register", "L1Norm", "L2Norm", "BNScale", "bn_l1_penalty", "FPGM",
           "Random", "Normalized", "lamp", "normalize_scores", "KMeansCriterion", "cluster_filters",
           "kmeans_removal", "DataCriterion", "Taylor", "Coverage", "APoZ", "HRank", "TaylorWeight",
           "Fisher", "KTaylor", "Wanda", "OCAP", "LRP"]
