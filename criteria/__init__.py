"""Importance criteria for structured pruning, usable on their own (no engine needed).

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
import importlib
import warnings

from criteria.base import Criterion, GroupView, WeightCriterion, Wrapper, lowest
from criteria.registry import available, get, register
from criteria.magnitude import BNScale, L1Norm, L2Norm, bn_l1_penalty
from criteria.fpgm import FPGM
from criteria.randomized import Random
from criteria.normalize import Normalized
from criteria.kmeans import KMeansCriterion
from criteria.data import DataCriterion
from criteria.activations import APoZ, Coverage, HRank, Taylor
from criteria.gradients import Fisher, KTaylor, TaylorWeight
from criteria.wanda import Wanda
from criteria.ocap import OCAP
from criteria.lrp import LRP

__all__ = ["Criterion", "Wrapper", "GroupView", "WeightCriterion", "DataCriterion", "get", "register",
           "available", "lowest", "Normalized", "bn_l1_penalty", "L1Norm", "L2Norm", "BNScale", "FPGM",
           "Random", "KMeansCriterion", "Taylor", "Coverage", "APoZ", "HRank", "TaylorWeight", "Fisher",
           "KTaylor", "Wanda", "OCAP", "LRP"]

_MOVED = {"layer_view": "criteria.base", "n_remove": "criteria.base", "CRITERIA": "criteria.registry",
          "lamp": "criteria.normalize", "normalize_scores": "criteria.normalize",
          "cluster_filters": "criteria.kmeans", "kmeans_removal": "criteria.kmeans"}


def __getattr__(name: str):
    if name not in _MOVED:
        raise AttributeError(f"module 'criteria' has no attribute {name!r}")
    warnings.warn(f"criteria.{name} is deprecated; use {_MOVED[name]}.{name}", DeprecationWarning, stacklevel=2)
    return getattr(importlib.import_module(_MOVED[name]), name)
