"""Build a model from a text spec: the one resolver for the CLI, ``surgery.load`` and the pipeline.

A spec is a ``surgery.models`` name (``resnet20``, ``vgg16_bn``, ...), ``torchvision:NAME``,
``timm:NAME``, or ``module:function`` / ``path/to/file.py:function`` returning an nn.Module.
``num_classes`` is passed on when the builder accepts it. Weights are random (no downloads).

Example:
    >>> from surgery.architectures import build
    >>> build("resnet20", num_classes=10).fc.out_features
    10
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
from typing import Any

import torch.nn as nn

__all__ = ["build"]


def build(spec: str, **kwargs: Any) -> nn.Module:
    """The model named by ``spec`` built with ``kwargs`` (random weights).

    Raises ValueError naming the spec and what is accepted when it cannot be resolved.
    """
    if not isinstance(spec, str) or not spec:
        raise TypeError(f"a model spec is a non-empty string, got {spec!r}")
    if spec.startswith("torchvision:"):
        model = _torchvision(spec.split(":", 1)[1], kwargs)
    elif spec.startswith("timm:"):
        model = _timm(spec.split(":", 1)[1], kwargs)
    elif ":" in spec:
        model = _call(_function(spec), kwargs)
    else:
        zoo = importlib.import_module("surgery.models")  # looked up by name: the engine never imports the zoo
        try:
            model = zoo.create(spec, **kwargs)
        except ValueError as err:
            raise ValueError(f"{err}; or give torchvision:NAME, timm:NAME or module:function") from None
    if not isinstance(model, nn.Module):
        raise ValueError(f"{spec} returned {type(model).__name__}, not an nn.Module")
    return model


def _torchvision(name: str, kwargs: dict) -> nn.Module:
    import torchvision
    if name not in torchvision.models.list_models(module=torchvision.models):
        raise ValueError(f"unknown torchvision model {name!r} (torchvision.models.list_models() lists them)")
    return torchvision.models.get_model(name, weights=None, **kwargs)


def _timm(name: str, kwargs: dict) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise ValueError("timm:NAME needs timm: pip install timm") from None
    if not timm.is_model(name):
        raise ValueError(f"unknown timm model {name!r} (timm.list_models() lists them)")
    return timm.create_model(name, pretrained=False, **kwargs)


def _function(spec: str):
    where, _, fn_name = spec.rpartition(":")
    if where.endswith(".py"):
        if not os.path.exists(where):
            raise ValueError(f"no such file: {where}")
        module_spec = importlib.util.spec_from_file_location("_surgery_user_model", where)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as err:
            raise ValueError(f"cannot import {where!r} ({err}); is it on PYTHONPATH?") from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise ValueError(f"{where} has no function {fn_name!r}")
    return fn


def _call(fn, kwargs: dict) -> nn.Module:
    params = inspect.signature(fn).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    return fn(**{k: v for k, v in kwargs.items() if takes_any or k in params})
