"""Build a model from a text spec: the one resolver for the CLI, ``surgery.load`` and the pipeline.

A spec is a ``surgery.models`` name (``resnet20``, ``vgg16_bn``, ...), ``torchvision:NAME``,
``timm:NAME``, or ``module:function`` / ``path/to/file.py:function`` returning an nn.Module.
``num_classes`` is passed on when the builder accepts it. Weights are random (no downloads).

A spec read from a file (a saved model, a run folder) is built with :func:`build_stored`,
which never imports or calls code the file names: only zoo names, ``torchvision:`` and
``timm:`` specs, and the functions the caller passes in ``builders``.

Example:
    >>> from surgery.core.architectures import build
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
from surgery.core.errors import ArgumentError, ArgumentTypeError, UntrustedSpecError

__all__ = ["build", "build_stored", "build_function", "is_function_spec"]

# keyword arguments a stored spec may not carry: they make a builder read files or download
_FILE_KWARGS = ("checkpoint", "pretrained", "weights", "path", "file", "url", "cache_dir")



def build(spec: str, **kwargs: Any) -> nn.Module:
    """The model named by ``spec`` built with ``kwargs`` (random weights).

    Raises ValueError naming the spec and what is accepted when it cannot be resolved.
    """
    if not isinstance(spec, str) or not spec:
        raise ArgumentTypeError(f"a model spec is a non-empty string, got {spec!r}")
    if spec.startswith("torchvision:"):
        model = _torchvision(spec.split(":", 1)[1], kwargs)
    elif spec.startswith("timm:"):
        model = _timm(spec.split(":", 1)[1], kwargs)
    elif is_function_spec(spec):
        model = _call(build_function(spec), kwargs)
    else:
        zoo = importlib.import_module("surgery.models")  # looked up by name: the engine never imports the zoo
        try:
            model = zoo.create(spec, **kwargs)
        except ValueError as err:
            raise ArgumentError(f"{err}; or give torchvision:NAME, timm:NAME or module:function") from None
    if not isinstance(model, nn.Module):
        raise ArgumentError(f"{spec} returned {type(model).__name__}, not an nn.Module")
    return model


def build_stored(spec: Any, kwargs: dict | None = None, *, builders: dict | None = None,
                 source: str = "the file") -> nn.Module:
    """Build a spec that was read from ``source`` (a saved model, a run folder).

    Zoo names, ``torchvision:NAME`` and ``timm:NAME`` are built as by :func:`build`;
    a ``module:function`` or ``file.py:function`` spec is built only with the function the
    caller gives for it in ``builders`` (``{"my_pkg.nets:build": build}``): nothing named by
    the file is imported or called. Keyword arguments that would make a builder read a file
    or download (``checkpoint_path``, ``pretrained``, ``weights``, ...) are refused.

    Example:
        >>> build_stored("resnet20", {"num_classes": 10}).fc.out_features
        10
        >>> try:
        ...     build_stored("os:system", {"command": "true"})
        ... except UntrustedSpecError as err:
        ...     print(str(err)[:56])
        the file names the function 'os:system' to build its mod
    """
    kwargs = dict(kwargs or {})
    builders = dict(builders or {})
    if not isinstance(spec, str) or not spec:
        raise UntrustedSpecError(f"{source} names no model spec (got {spec!r}): pass model=<a fresh instance>")
    for key in kwargs:
        if not isinstance(key, str) or any(word in key.lower() for word in _FILE_KWARGS):
            raise UntrustedSpecError(f"{source} passes {key!r} to the builder of {spec!r}; keyword arguments "
                                     f"that read files or download are not taken from a file. Build the model "
                                     f"yourself and pass model=<it>")
    if spec in builders:
        if not callable(builders[spec]):
            raise ArgumentTypeError(f"builders[{spec!r}] must be a function returning an nn.Module")
        model = _call(builders[spec], kwargs)
        if not isinstance(model, nn.Module):
            raise ArgumentError(f"builders[{spec!r}] returned {type(model).__name__}, not an nn.Module")
        return model
    if is_function_spec(spec):
        raise UntrustedSpecError(
            f"{source} names the function {spec!r} to build its model; functions named by a file are never "
            f"imported or called. If you trust it, pass it yourself: builders={{{spec!r}: <the function>}} "
            f"(CLI: --builder {spec}), or pass model=<a fresh instance>")
    return build(spec, **kwargs)


def _torchvision(name: str, kwargs: dict) -> nn.Module:
    import torchvision
    if name not in torchvision.models.list_models(module=torchvision.models):
        raise ArgumentError(f"unknown torchvision model {name!r} (torchvision.models.list_models() lists them)")
    return torchvision.models.get_model(name, weights=None, **kwargs)


def _timm(name: str, kwargs: dict) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise ArgumentError("timm:NAME needs timm: pip install timm") from None
    if not timm.is_model(name):
        raise ArgumentError(f"unknown timm model {name!r} (timm.list_models() lists them)")
    return timm.create_model(name, pretrained=False, **kwargs)


def is_function_spec(spec: str) -> bool:
    """``module:function`` or ``file.py:function`` (code to import), not a zoo/torchvision/timm name."""
    return isinstance(spec, str) and ":" in spec and not spec.startswith(("torchvision:", "timm:"))


def build_function(spec: str):
    """The function a ``module:function`` / ``file.py:function`` spec names (imported: only
    for specs the user gave, never for one read from a file)."""
    where, _, fn_name = spec.rpartition(":")
    if where.endswith(".py"):
        if not os.path.exists(where):
            raise ArgumentError(
                f"no such file: {where} (looked in {os.getcwd()}). A spec names its file relative to where it was "
                f"written: run from that folder, or pass the function yourself: surgery.load(path, "
                f"builders={{{spec!r}: build}}) / --builder with a path that exists here, or model=<a fresh instance>")
        module_spec = importlib.util.spec_from_file_location("_surgery_user_model", where)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as err:
            raise ArgumentError(f"cannot import {where!r} ({err}); is it on PYTHONPATH?") from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise ArgumentError(f"{where} has no function {fn_name!r}")
    return fn


def _call(fn, kwargs: dict) -> nn.Module:
    params = inspect.signature(fn).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    return fn(**{k: v for k, v in kwargs.items() if takes_any or k in params})
