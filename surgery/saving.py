"""Save and load pruned models without pickled code.

``save`` writes the plans that produced the model (JSON text) and its ``state_dict``;
``load`` replays the plans on a fresh instance of the architecture, then loads the
weights with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import json
import os
from typing import Any

import torch
import torch.nn as nn

from surgery.plan import Plan, apply
from surgery.rewrite import HISTORY

__all__ = ["save", "load"]

FORMAT = "torch-surgery-model"


def save(model: nn.Module, path: str | os.PathLike) -> None:
    """Write ``model``'s pruning history and weights to ``path``.

    Example:
        >>> import os, tempfile, torch, surgery
        >>> from models import create
        >>> x = torch.randn(1, 3, 32, 32)
        >>> small = surgery.prune(create("resnet20"), x, ratio=0.5)
        >>> path = os.path.join(tempfile.mkdtemp(), "small.pt")
        >>> surgery.save(small, path)
        >>> back = surgery.load(path, model=create("resnet20"))
        >>> bool(torch.equal(back.eval()(x), small.eval()(x)))
        True
    """
    history = list(getattr(model, HISTORY, []))
    torch.save({"format": FORMAT, "version": 1, "history": json.dumps(history),
                "state_dict": model.state_dict()}, path)


def load(path: str | os.PathLike, model: nn.Module, *, example_inputs: Any = None,
         map_location: Any = None) -> nn.Module:
    """Rebuild the pruned model saved at ``path`` from ``model``, a fresh instance of the
    same architecture (its weights are replaced). No pickled code is executed."""
    data = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path} was not written by surgery.save")
    for text in json.loads(data["history"]):
        model = apply(model, Plan.from_json(text), example_inputs=example_inputs, inplace=True)
    try:
        model.load_state_dict(data["state_dict"])
    except RuntimeError as err:
        raise ValueError(f"the weights in {path} do not fit this model after replaying its plans: "
                         f"pass a fresh instance of the architecture that was saved ({err})") from None
    return model
