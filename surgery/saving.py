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

from surgery.history import history
from surgery.plan import Plan
from surgery.replay import apply_plan
from surgery.transaction import transaction

__all__ = ["save", "load"]

FORMAT, VERSION = "torch-surgery-model", 1


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
    torch.save({"format": FORMAT, "version": VERSION, "history": json.dumps(history(model)),
                "state_dict": model.state_dict()}, path)


def load(path: str | os.PathLike, model: nn.Module, *, example_inputs: Any = None,
         map_location: Any = None) -> nn.Module:
    """Rebuild the pruned model saved at ``path`` from ``model``, a fresh instance of the
    same architecture (edited in place; its weights are replaced). No pickled code is
    executed. On any error ``model`` is left exactly as it was."""
    if not isinstance(model, nn.Module):
        raise TypeError("load needs model=<a fresh instance of the saved architecture> (e.g. "
                        "torchvision.models.resnet50() or models.create('resnet20')); the file holds "
                        "plans and weights, not code")
    data = _read(path, map_location)
    with transaction(model):
        for text in json.loads(data["history"]):
            model = apply_plan(model, Plan.from_json(text), example_inputs=example_inputs, inplace=True)
        try:
            model.load_state_dict(data["state_dict"])
        except RuntimeError as err:
            raise ValueError(f"the weights in {path} do not fit this model after replaying its plans: "
                             f"pass a fresh instance of the architecture that was saved ({err})") from None
    return model


def _read(path: str | os.PathLike, map_location: Any) -> dict:
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # empty, truncated or not a torch file
        raise ValueError(f"{path} is not a file written by surgery.save ({type(err).__name__}: {err})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path} was not written by surgery.save")
    if data.get("version") != VERSION:
        raise ValueError(f"{path} has format version {data.get('version')!r}; this torch-surgery reads "
                         f"version {VERSION} (upgrade torch-surgery to read it)")
    if not isinstance(data.get("history"), str) or not isinstance(data.get("state_dict"), dict):
        raise ValueError(f"{path} is malformed: it lacks its history or state_dict")
    try:
        json.loads(data["history"])
    except ValueError as err:
        raise ValueError(f"{path} is malformed: its history is not JSON ({err})") from None
    return data
