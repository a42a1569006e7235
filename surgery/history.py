"""A pruned model's history: the plans that produced it, as JSON text on the model.

Every entry point that rewrites a model (``prune``, ``Pruner``, ``Surgeon``,
``apply_plan``) records its plan here; ``surgery.save`` stores the history and
``surgery.load`` replays it.

Example:
    >>> import torch, surgery
    >>> from models import create
    >>> small = surgery.prune(create("resnet20"), torch.randn(1, 3, 32, 32), ratio=0.5)
    >>> len(history(small))
    1
"""
from __future__ import annotations

import torch.nn as nn

from surgery.plan import Plan, fingerprint

__all__ = ["HISTORY", "history", "record"]

HISTORY = "surgery_history"
_NAME = "_surgery_model_name"


def history(model: nn.Module) -> list:
    """The JSON plans that produced ``model``, oldest first (empty for an unpruned model)."""
    return list(getattr(model, HISTORY, []))


def record(result: nn.Module, source: nn.Module, plan: Plan) -> nn.Module:
    """Give ``result`` the history of ``source`` plus ``plan`` (when it removed anything)."""
    past = history(source)
    if plan.entries:
        past.append(plan.to_json(indent=None))
    object.__setattr__(result, HISTORY, past)
    object.__setattr__(result, _NAME, plan.model or fingerprint(source)["class"])
    return result
