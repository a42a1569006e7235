"""Save and load pruned models without pickled code.

``save`` writes the plans that produced the model (JSON text), its ``state_dict`` and,
when given, how to build the architecture (a spec for :func:`surgery.core.architectures.build`);
``load`` replays the plans on a fresh instance of the architecture (yours, or one built
from the stored spec), then loads the weights with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import copy
import json
import os
from typing import Any

import torch
import torch.nn as nn

from surgery.core.architectures import build_stored
from surgery.plan import history
from surgery.plan import Plan
from surgery.replay import replay
from surgery.core.errors import ArgumentError, ArgumentTypeError, InPlaceError
from surgery.core.transaction import transaction
from surgery.groups.ties import retie, shared_owners

__all__ = ["save", "load"]

FORMAT, VERSION = "torch-surgery-model", 1


def save(model: nn.Module, path: str | os.PathLike, *, architecture: str | dict | None = None) -> None:
    """Write ``model``'s pruning history and weights to ``path``.

    ``architecture`` records how to build the unpruned model, so that ``load`` needs no
    ``model=``: a spec string (``"resnet20"``, ``"torchvision:resnet50"``, ``"timm:NAME"``,
    ``"my_pkg.nets:build"``) or a dict ``{"name": spec, **keyword arguments}``
    (``{"name": "resnet20", "num_classes": 100}``). It is stored as JSON, not code.

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
        >>> surgery.save(small, path, architecture="resnet20")
        >>> bool(torch.equal(surgery.load(path).eval()(x), small.eval()(x)))
        True
    """
    spec = _architecture(architecture)
    torch.save({"format": FORMAT, "version": VERSION, "history": json.dumps(history(model)),
                "architecture": json.dumps(spec), "state_dict": model.state_dict(),
                "training": bool(model.training)}, path)


def load(path: str | os.PathLike, model: nn.Module | None = None, *, example_inputs: Any = None,
         map_location: Any = None, builders: dict | None = None) -> nn.Module:
    """Rebuild the pruned model saved at ``path``.

    ``model`` is a fresh instance of the saved architecture (edited in place and returned;
    when a plan changes literal sizes of its forward, the result is a new GraphModule and
    ``model`` is left as it was); leave it out when the file was saved with ``architecture=`` and it is
    built from that spec. No pickled code is executed, and no function the file names: a
    stored ``module:function`` spec is built only with the function you pass for it in
    ``builders`` (``{"my_pkg.nets:build": build}``); zoo, ``torchvision:`` and ``timm:``
    specs need nothing. On any error ``model`` is left exactly as it was, weights included.
    The model comes back in the mode it was saved in (eval for files that do not say), so a
    loaded detector or BatchNorm model gives the saved model's outputs without ``.eval()``."""
    data = _read(path, map_location)
    built = model is None
    if built:
        model = _build_saved(path, data, builders)
    if not isinstance(model, nn.Module):
        raise ArgumentTypeError(f"model must be an nn.Module (a fresh instance of the saved architecture), "
                        f"got {type(model).__name__}")
    plans = [Plan.from_json(text) for text in json.loads(data["history"])]
    try:
        with transaction(model):
            loaded = _replayed(model, plans, data, path, example_inputs, built)
    except InPlaceError:  # a plan patches literal sizes: the result is a new GraphModule, `model` is untouched
        loaded = _replayed(copy.deepcopy(model), plans, data, path, example_inputs, True)
    return loaded.train(bool(data.get("training", False)))


def _replayed(model: nn.Module, plans: list, data: dict, path, example_inputs: Any, owned: bool) -> nn.Module:
    for plan in plans:
        model = replay(model, plan, example_inputs=example_inputs, inplace=True, new_object_ok=owned)
    state = _checked_state(model, data["state_dict"], path)  # all of it, before anything is written
    ties = shared_owners(model)
    model.load_state_dict(state, assign=True)  # new tensors: the caller's are never written into
    retie(model, ties)
    return model


def _checked_state(model: nn.Module, state: dict, path: str | os.PathLike) -> dict:
    """The file's state, checked whole against the model (names, types, shapes, dtype kinds)
    and placed like the model's own tensors (device, dtype), so that loading it cannot fail
    halfway. Raises naming the first problems; nothing has been written then."""
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    not_tensors = [k for k in state if not isinstance(state[k], torch.Tensor)]
    wrong = [f"{k}: file {tuple(state[k].shape)}, model {tuple(own[k].shape)}" for k in own
             if isinstance(state.get(k), torch.Tensor) and state[k].shape != own[k].shape]
    kinds = [f"{k}: file {state[k].dtype}, model {own[k].dtype}" for k in own
             if isinstance(state.get(k), torch.Tensor) and state[k].is_floating_point() != own[k].is_floating_point()]
    if missing or unexpected or not_tensors or wrong or kinds:
        detail = "; ".join(part for part in (
            f"missing {missing[:3]}" if missing else "", f"unexpected {unexpected[:3]}" if unexpected else "",
            f"not tensors: {not_tensors[:3]}" if not_tensors else "",
            f"shapes differ: {wrong[:3]}" if wrong else "", f"dtypes differ in kind: {kinds[:3]}" if kinds else "")
            if part)
        raise ArgumentError(f"the weights in {path} do not fit this model after replaying its plans ({detail}): "
                            f"pass a fresh instance of the architecture that was saved. The model was left as it was")
    return {k: state[k].to(device=own[k].device, dtype=own[k].dtype) for k in own}


def _architecture(architecture: str | dict | None) -> dict | None:
    if architecture is None:
        return None
    spec = {"name": architecture} if isinstance(architecture, str) else dict(architecture)
    if not isinstance(spec.get("name"), str):
        raise ArgumentTypeError("architecture must be a spec string or a dict with a 'name' spec string, "
                        f"got {architecture!r}")
    try:
        json.dumps(spec)
    except TypeError as err:
        raise ArgumentTypeError(f"architecture's keyword arguments must be JSON values ({err})") from None
    return spec


def _build_saved(path: str | os.PathLike, data: dict, builders: dict | None) -> nn.Module:
    spec = json.loads(data.get("architecture") or "null")
    if spec is None:
        raise ArgumentTypeError(f"{path} does not say how to build its architecture: pass model=<a fresh instance> "
                        "(e.g. torchvision.models.resnet50() or models.create('resnet20')), or save with "
                        "surgery.save(model, path, architecture='resnet20') next time")
    if not isinstance(spec, dict):
        raise ArgumentError(f"{path} is malformed: its architecture is not a spec")
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    return build_stored(spec.get("name"), kwargs, builders=builders, source=str(path))


def _read(path: str | os.PathLike, map_location: Any) -> dict:
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # empty, truncated or not a torch file
        raise ArgumentError(f"{path} is not a file written by surgery.save ({type(err).__name__}: {err})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ArgumentError(f"{path} was not written by surgery.save")
    if data.get("version") != VERSION:
        raise ArgumentError(f"{path} has format version {data.get('version')!r}; this torch-surgery reads "
                         f"version {VERSION} (upgrade torch-surgery to read it)")
    if not isinstance(data.get("architecture", ""), (str, type(None))):
        raise ArgumentError(f"{path} is malformed: its architecture is not JSON text")
    if not isinstance(data.get("history"), str) or not isinstance(data.get("state_dict"), dict):
        raise ArgumentError(f"{path} is malformed: it lacks its history or state_dict")
    try:
        json.loads(data["history"])
    except ValueError as err:
        raise ArgumentError(f"{path} is malformed: its history is not JSON ({err})") from None
    return data
