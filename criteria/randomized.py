"""Random scores (a baseline), reproducible with a seed."""
from __future__ import annotations

import torch

from criteria.base import Criterion, GroupView
from criteria.registry import register

__all__ = ["Random"]


@register("random")
class Random(Criterion):
    """Uniform random scores. The generator is seeded once, so a run is reproducible.

    Example:
        >>> import torch.nn as nn
        >>> conv = nn.Conv2d(3, 5, 3)
        >>> bool((Random(seed=1).score(conv) == Random(seed=1).score(conv)).all())
        True
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self._gen = torch.Generator().manual_seed(seed)

    def score_group(self, view: GroupView) -> torch.Tensor:
        return torch.rand(view.size, generator=self._gen, dtype=torch.float64)
