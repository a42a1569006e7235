"""Calibration: run a model over batches with hooks that accumulate per-channel sums.

Hooks are added and removed by :func:`hooked` (removed even when the forward raises);
the model's train/eval mode and every parameter's ``requires_grad`` are restored.
Statistics are running sums per channel, so memory does not grow with the data.
With ``torch.distributed`` initialised they are all-reduced, so every rank holds the
sums of all ranks' data.
"""
from __future__ import annotations

import contextlib
import itertools
from typing import Any, Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from surgery.core.errors import ArgumentError, ArgumentTypeError

__all__ = ["Stats", "hooked", "run_batches", "HOOKABLE", "CHANNELS_LAST", "hookable", "channel_dim",
           "per_channel_view"]

HOOKABLE = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


# Layers named by qualified class name (their package need not be imported) that read and
# write the last dim like nn.Linear: Hugging Face's Conv1D (GPT-2) stores its weight [in, out].
CHANNELS_LAST: set = {"transformers.pytorch_utils.Conv1D"}


def _channels_last(module: nn.Module) -> bool:
    return any(f"{c.__module__}.{c.__qualname__}" in CHANNELS_LAST for c in type(module).__mro__)


def hookable(module: nn.Module) -> bool:
    """Layers whose statistics data criteria collect: conv, linear, norms, and ``CHANNELS_LAST``."""
    return isinstance(module, HOOKABLE) or _channels_last(module)


def channel_dim(module: nn.Module, t: torch.Tensor) -> int:
    """The channel dim of a module's input/output: last for Linear/LayerNorm (and the layers
    in ``CHANNELS_LAST``), else 1."""
    if isinstance(module, (nn.Linear, nn.LayerNorm)) or _channels_last(module) or t.dim() < 2:
        return t.dim() - 1
    return 1


def per_channel_view(t: torch.Tensor, dim: int) -> torch.Tensor:
    """``[N, C, positions]`` (a Linear's [N, F] input becomes [N, F, 1])."""
    t = t.movedim(dim, -1)
    return t.reshape(-1, t.shape[-1], 1) if t.dim() <= 2 else t.reshape(t.shape[0], -1, t.shape[-1]).transpose(1, 2)


class Stats:
    """Per-module running sums, keyed by the module's position in ``model.modules()``."""

    def __init__(self, modules: list) -> None:
        self.modules = modules
        self.order = {id(m): i for i, m in enumerate(modules)}
        self.sums: dict = {}

    def add(self, module: nn.Module, values: dict) -> None:
        slot = self.sums.setdefault(self.order[id(module)], {})
        for key, v in values.items():
            v = v.detach().double()
            slot[key] = slot[key] + v if key in slot else v.clone()

    def get(self, module: nn.Module) -> dict | None:
        return self.sums.get(self.order.get(id(module), -1))

    def all_reduce(self) -> None:
        """Sum every statistic over the ranks of the default process group (if any)."""
        import torch.distributed as dist
        if not (dist.is_available() and dist.is_initialized()):
            return
        for i in sorted(self.sums):
            for key in sorted(self.sums[i]):
                dist.all_reduce(self.sums[i][key], op=dist.ReduceOp.SUM)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for slot in self.sums.values() for t in slot.values())


@contextlib.contextmanager
def hooked(model: nn.Module, modules: list, *, forward: Callable | None = None,
           pre: Callable | None = None, needs_grad: bool = False):
    """Eval mode, hooks on ``modules``; everything restored on exit, even after an error."""
    modes = {m: m.training for m in model.modules()}
    flags = {p: p.requires_grad for p in model.parameters()}
    handles = []
    try:
        model.eval()
        if needs_grad:
            for p in model.parameters():
                p.requires_grad_(True)
        for m in modules:
            if forward is not None:
                handles.append(m.register_forward_hook(forward))
            if pre is not None:
                handles.append(m.register_forward_pre_hook(pre))
        yield
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
        for p, flag in flags.items():
            p.requires_grad_(flag)
            p.grad = None


def _split(batch: Any) -> tuple:
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    return batch, None


def _to(x: Any, device) -> Any:
    if device is None:
        return x
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, (tuple, list)):
        return type(x)(_to(v, device) for v in x)
    if isinstance(x, dict):
        return {k: _to(v, device) for k, v in x.items()}
    return x


def sum_cross_entropy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy summed over the batch: per-sample gradients do not depend on batch size."""
    return F.cross_entropy(output, target, reduction="sum")


def as_batches(data: Any, batch_size: int = 32) -> Iterable:
    """What calibration iterates: a DataLoader or list of batches as given; a map-style
    ``Dataset`` (e.g. ``TensorDataset``) of single samples wrapped in a DataLoader; a bare
    tensor taken as one batch of inputs (no labels)."""
    if isinstance(data, torch.Tensor):
        return [data]
    if isinstance(data, torch.utils.data.Dataset) and not isinstance(data, torch.utils.data.IterableDataset):
        return torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False)
    if not hasattr(data, "__iter__"):
        raise ArgumentTypeError(f"data must be a DataLoader, a Dataset, a list of (inputs, targets) batches or a tensor "
                        f"batch; got {type(data).__name__}")
    return data


def _call(model: nn.Module, inputs: Any) -> Any:
    """A batch's inputs: keyword arguments (a dict, e.g. Hugging Face token batches), several
    positional arguments (a tuple or list) or one tensor."""
    if isinstance(inputs, dict):
        return model(**inputs)
    return model(*inputs) if isinstance(inputs, (tuple, list)) else model(inputs)


def _loss(output: Any, targets: Any, loss_fn: Callable | None) -> torch.Tensor:
    """``loss_fn(output, targets)``; without a loss_fn, a loss the model computed itself (a Hugging
    Face output's ``.loss``, given ``labels`` in the batch) or summed cross-entropy on targets."""
    if loss_fn is not None:
        return loss_fn(output, targets)
    own = getattr(output, "loss", None)
    if targets is None and isinstance(own, torch.Tensor):
        return own
    if targets is None:
        raise ArgumentError("gradient criteria need targets: batches of (inputs, targets), a dict batch with "
                         "labels whose output has .loss, or a forward_fn returning (output, targets)")
    return sum_cross_entropy(output, targets)


def run_batches(model: nn.Module, data: Iterable, *, max_batches: int | None = None,
                forward_fn: Callable | None = None, loss_fn: Callable | None = None,
                backward: bool = False, device: Any = None, on_batch: Callable | None = None,
                after_backward: Callable | None = None, desc: str = "calibrating") -> int:
    """Forward (and backward) every batch; returns the number of batches seen.

    A batch is ``(inputs, targets)``, or a dict of keyword arguments (``{"input_ids": ids,
    "labels": ids}``), unless ``forward_fn(model, batch) -> (output, targets)`` says otherwise.
    ``loss_fn(output, targets)`` defaults to the output's own ``.loss`` when the batch has no
    targets, else summed cross-entropy.
    """
    if data is None:
        raise ArgumentError("this criterion needs data: pass data=<DataLoader or list of (inputs, targets)>")
    data = as_batches(data)
    if max_batches is not None and (isinstance(max_batches, bool) or not isinstance(max_batches, int)
                                    or max_batches < 1):
        raise ArgumentError(f"max_batches must be a positive integer or None (all batches), got {max_batches!r}")
    total = max_batches if max_batches is not None else (len(data) if hasattr(data, "__len__") else None)
    seen = 0
    for batch in tqdm(itertools.islice(data, max_batches), total=total, desc=desc, disable=None, leave=False):
        batch = _to(batch, device)
        inputs, targets = _split(batch)
        if on_batch is not None:
            on_batch(inputs, targets)
        with torch.set_grad_enabled(backward):
            if forward_fn is not None:
                output, targets = forward_fn(model, batch)
            else:
                output = _call(model, inputs)
            if backward:
                model.zero_grad(set_to_none=True)
                _loss(output, targets, loss_fn).backward()
                if after_backward is not None:
                    after_backward()
        seen += 1
    if seen == 0:
        raise ArgumentError("the calibration data yielded no batches")
    return seen
