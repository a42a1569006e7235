"""Example inputs, input specs, eval-mode runs and layer-name resolution.

Everything here is shared by the engine's passes and imports no other project module.

Example:
    >>> import torch, torch.nn as nn
    >>> as_inputs(torch.zeros(1, 3))[0][0].shape
    torch.Size([1, 3])
    >>> net = nn.Sequential(nn.Linear(2, 2)).train()
    >>> with evaluating(net):
    ...     net.training
    False
    >>> net.training
    True
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterable, Iterator

import torch
import torch.nn as nn

from surgery.core.errors import ArgumentError, ArgumentTypeError

__all__ = ["as_inputs", "check_not_empty", "check_finite", "input_spec", "spec_inputs", "evaluating", "run_eval", "flat_tensors",
           "layer_names", "layer_name"]

MAX_SPEC_ELEMENTS = 2 ** 28  # 1 GiB of float32: larger specs are refused, not allocated


def as_inputs(example_inputs: Any) -> tuple[tuple, dict]:
    """Normalise example inputs: a tensor, a tuple/list of positional inputs, or a dict."""
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,), {}
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    if isinstance(example_inputs, dict):
        return (), dict(example_inputs)
    raise ArgumentTypeError("example_inputs must be a tensor, a tuple/list of inputs or a dict of "
                    f"keyword inputs; got {type(example_inputs).__name__}")


def check_not_empty(example_inputs: Any) -> None:
    """Refuse example inputs with an empty tensor (a batch of 0 samples): the model would be
    traced and verified on nothing. Raises ValueError naming the input."""
    args, kwargs = as_inputs(example_inputs)
    items = list(kwargs.items()) if kwargs else [(f"example_inputs[{i}]", a) for i, a in enumerate(args)]
    for name, value in items:
        if isinstance(value, torch.Tensor) and value.numel() == 0:
            raise ArgumentError(f"{name} is empty (shape {tuple(value.shape)}): tracing and verification would "
                             f"check nothing. Give at least one sample, e.g. torch.randn(1, 3, 224, 224)")


def check_finite(example_inputs: Any) -> None:
    """Refuse a floating example input with no finite value (``torch.empty`` can hold such):
    every output would be NaN or inf and verification would compare nothing."""
    args, kwargs = as_inputs(example_inputs)
    items = list(kwargs.items()) if kwargs else [(f"example_inputs[{i}]", a) for i, a in enumerate(args)]
    for name, value in items:
        if isinstance(value, torch.Tensor) and value.is_floating_point() and value.numel() \
                and not bool(torch.isfinite(value).any()):
            raise ArgumentError(f"{name} holds no finite value (all NaN or inf; torch.empty can leave such values): "
                                f"nothing could be verified on it. Give real data or torch.randn(...)")


def input_spec(example_inputs: Any) -> list:
    """Shapes and dtypes of the tensor inputs (what a plan records to trace a fresh model)."""
    args, kwargs = as_inputs(example_inputs)
    items = list(kwargs.items()) if kwargs else [(None, a) for a in args]
    spec = []
    for name, value in items:
        if not isinstance(value, torch.Tensor):
            continue
        entry = {"shape": list(value.shape), "dtype": str(value.dtype).replace("torch.", "")}
        spec.append({"name": name, **entry} if name is not None else entry)
    return spec


def spec_inputs(spec: list, device: torch.device | None = None) -> Any:
    """Example inputs (zeros) rebuilt from a plan's ``inputs``; refuses huge or bad specs."""
    if not spec:
        raise ArgumentError("the plan records no example inputs; pass example_inputs=... to apply it")
    tensors = []
    for s in spec:
        try:
            shape, dtype = [int(n) for n in s["shape"]], getattr(torch, s["dtype"])
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ArgumentError(f"malformed input spec {s!r} ({err}); pass example_inputs=...") from None
        n = 1
        for d in shape:
            n *= d
        if min(shape, default=1) < 0 or n > MAX_SPEC_ELEMENTS or not isinstance(dtype, torch.dtype):
            raise ArgumentError(f"input spec {s!r} asks for {n:,} elements (limit {MAX_SPEC_ELEMENTS:,}) "
                             f"or a bad dtype; pass example_inputs=... instead")
        tensors.append(torch.zeros(shape, dtype=dtype, device=device))
    if "name" in spec[0]:
        return {s["name"]: t for s, t in zip(spec, tensors)}
    return tuple(tensors)


@contextlib.contextmanager
def evaluating(*models: nn.Module) -> Iterator[None]:
    """Put every module of ``models`` in eval mode; restore each module's own mode after."""
    modes = {m: m.training for model in models for m in model.modules()}
    try:
        for model in models:
            model.eval()
        yield
    finally:
        for m, mode in modes.items():
            m.training = mode


def run_eval(model: nn.Module, example_inputs: Any) -> Any:
    """``model(*example_inputs)`` in eval mode without gradients (modes restored)."""
    args, kwargs = as_inputs(example_inputs)
    with evaluating(model), torch.no_grad():
        return model(*args, **kwargs)


def flat_tensors(out: Any) -> list:
    """Every tensor inside a (nested) output, in order; other values are skipped."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in flat_tensors(o)]
    return []


def layer_name(model: nn.Module, layer: nn.Module | str, what: str = "layer") -> str:
    """The qualified name of ``layer`` (a submodule of ``model`` or its name)."""
    return layer_names(model, [layer], what)[0]


def layer_names(model: nn.Module, layers: Iterable, what: str = "layers") -> list:
    """Names of ``layers`` (submodules of ``model`` or their names), with errors that name
    the bad entry. A single string or module is refused (it would be read as a sequence)."""
    if isinstance(layers, (str, nn.Module)):
        shown = repr(layers) if isinstance(layers, str) else type(layers).__name__
        raise ArgumentTypeError(f"{what} must be a list of submodules or names, got a single {shown}; "
                        f"wrap it in a list: [{shown}]")
    by_id = {id(m): n for n, m in model.named_modules()}
    known = set(by_id.values())
    names = []
    for layer in layers:
        if isinstance(layer, str):
            if layer not in known:
                raise ArgumentError(f"{what}: the model has no submodule named {layer!r}")
            names.append(layer)
        elif isinstance(layer, nn.Module) and id(layer) in by_id:
            names.append(by_id[id(layer)])
        elif isinstance(layer, nn.Module):
            raise ArgumentError(f"{what}: this {type(layer).__name__} is not a submodule of the model "
                             f"(after an edit, fetch layers again from the pruned model)")
        else:
            raise ArgumentTypeError(f"{what} entries must be submodules of the model or their names; "
                            f"got {type(layer).__name__}")
    return names


def owner_at(root: nn.Module, name: str) -> tuple[nn.Module, str]:
    """``(module, attribute)`` holding the parameter, buffer or tensor at dotted path ``name``."""
    owner, _, attr = name.rpartition(".")
    return (root.get_submodule(owner) if owner else root), attr


def tensor_at(root: nn.Module, name: str) -> torch.Tensor:
    """The parameter, buffer or tensor attribute at dotted path ``name``."""
    module, attr = owner_at(root, name)
    return getattr(module, attr)
