"""Importance criteria for structured pruning, usable on their own (no engine needed).

The package is ``surgery.criteria``; ``import criteria`` gives the same module (a file named
``criteria.py`` in your working directory cannot shadow the library's copy: the engine
imports ``surgery.criteria``).

A criterion returns one score per channel (higher means keep): ``criterion.score(layer)``
scores a layer's output channels; the engine passes a :class:`GroupView` for a group.
Helpers (``layer_view``, ``n_remove``, ``lamp``, ``cluster_filters``, ...) live in their
modules: ``criteria.base``, ``criteria.normalize``, ``criteria.kmeans``.

Example:
    >>> import torch.nn as nn, criteria
    >>> conv = nn.Conv2d(3, 8, 3)
    >>> idx = criteria.lowest(criteria.get("l1").score(conv), ratio=0.25)
    >>> len(idx)
    2
"""

from surgery.criteria.base import Criterion, GroupView, WeightCriterion, Wrapper, lowest
from surgery.criteria.registry import available, get, register
from surgery.criteria.magnitude import BNScale, L1Norm, L2Norm, bn_l1_penalty
from surgery.criteria.fpgm import FPGM
from surgery.criteria.randomized import Random
from surgery.criteria.normalize import Normalized
from surgery.criteria.kmeans import KMeansCriterion
from surgery.criteria.data import DataCriterion
from surgery.criteria.activations import APoZ, Coverage, HRank, Taylor
from surgery.criteria.gradients import Fisher, KTaylor, TaylorWeight
from surgery.criteria.wanda import Wanda
from surgery.criteria.activation_norm import FLAP, ActivationNorm
from surgery.criteria.ocap import OCAP
from surgery.criteria.lrp import LRP

__all__ = ["Criterion", "Wrapper", "GroupView", "WeightCriterion", "DataCriterion", "get", "register",
           "available", "lowest", "Normalized", "bn_l1_penalty", "L1Norm", "L2Norm", "BNScale", "FPGM",
           "Random", "KMeansCriterion", "Taylor", "Coverage", "APoZ", "HRank", "TaylorWeight", "Fisher",
           "KTaylor", "Wanda", "ActivationNorm", "FLAP", "OCAP", "LRP"]
