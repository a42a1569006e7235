"""Random scores (a baseline), reproducible with a seed."""
from __future__ import annotations

import hashlib

import torch

from surgery.criteria.base import Criterion, GroupView
from surgery.criteria.registry import register

__all__ = ["Random"]


@register("random")
class Random(Criterion):
    """Uniform random scores, reproducible: each group's scores come from ``seed`` and the
    group's own description (its layer names and size), so they do not depend on the order
    in which groups are scored (``prune``, ``Pruner`` and ``Surgeon`` agree).

    Example:
        >>> import torch.nn as nn
        >>> conv = nn.Conv2d(3, 5, 3)
        >>> bool((Random(seed=1).score(conv) == Random(seed=1).score(conv)).all())
        True
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def score_group(self, view: GroupView) -> torch.Tensor:
        key = f"{self.seed}|{view.size}|{sorted((k, tuple(v)) for k, v in view.names.items())}"
        gen = torch.Generator().manual_seed(int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little"))
        return torch.rand(view.size, generator=gen, dtype=torch.float64)
