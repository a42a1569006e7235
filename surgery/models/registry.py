"""``models.create(name, num_classes)`` and ``@register_model``."""
from __future__ import annotations

import warnings
from typing import Callable

import torch.nn as nn

from surgery.core.frames import user_stacklevel
from surgery.core.errors import ArgumentError

__all__ = ["MODELS", "register_model", "create", "available"]

MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable:
    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in MODELS and MODELS[name] is not fn:
            warnings.warn(f"register_model({name!r}): replacing {MODELS[name].__qualname__} with "
                          f"{fn.__qualname__}", stacklevel=user_stacklevel())
        MODELS[name] = fn
        return fn
    return deco


def available() -> list:
    return sorted(MODELS)


def create(name: str, num_classes: int = 10, **kwargs) -> nn.Module:
    """Build a reference architecture by name.

    Example:
        >>> from models import create
        >>> create("resnet20", num_classes=10).fc.out_features
        10
    """
    if name not in MODELS:
        raise ArgumentError(f"unknown model {name!r}; available: {', '.join(available())}")
    return MODELS[name](num_classes=num_classes, **kwargs)
