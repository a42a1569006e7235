"""The criterion of a replayed plan: the channels it removed score 0, the others 1."""
from __future__ import annotations

import numpy as np
import torch

from surgery.criteria.base import Criterion, GroupView

__all__ = ["Planned"]


class Planned(Criterion):
    """0 for the channels in ``removed`` (``{layer: {"in"/"out": indices}}``), 1 elsewhere.

    Example:
        >>> view = GroupView(consumers=[torch.ones(4, 2)], names={"consumers": ["down"]},
        ...                  index={"consumers": [np.arange(4)]}, modules={"consumers": [None]})
        >>> Planned({"down": {"in": [1, 3]}}).score(view).tolist()
        [1.0, 0.0, 1.0, 0.0]
    """
    name = "planned"

    def __init__(self, removed: dict) -> None:
        self.removed = removed

    def score_group(self, view: GroupView) -> torch.Tensor:
        score = torch.ones(view.size, dtype=torch.float64)
        for kind, role in (("consumers", "in"), ("producers", "out")):
            for name, index in zip(view.names.get(kind, []), view.index.get(kind, [])):
                gone = self.removed.get(name, {}).get(role)
                if gone:
                    units = np.asarray(index)[np.asarray(gone)]
                    score[torch.as_tensor(units[units >= 0], dtype=torch.long)] = 0.0
        return score
