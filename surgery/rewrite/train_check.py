"""Running a model in train mode for verification: code under ``if self.training:`` is checked too.

The traced graph and the eval-mode comparison see one branch of a forward that branches on
``self.training`` (auxiliary heads, stochastic depth, a different path): the other branch
would go unchecked. :func:`branches_on_training` says whether any module's code reads
``training``; :func:`train_forward` runs a model in train mode so that two runs (the masked
reference and the pruned model) are comparable and leave nothing behind:

- dropout is the identity (its random mask has one entry per channel, so it cannot agree
  between a model and its pruned copy); ``scaled_dot_product_attention`` and
  ``multi_head_attention_forward`` run with ``dropout_p=0``;
- the random generator is reseeded before the run (per-sample randomness such as stochastic
  depth then agrees), and restored after it;
- buffers (BatchNorm running statistics) are restored after the run.

Example:
    >>> import torch, torch.nn as nn
    >>> net = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Dropout(0.5))
    >>> x = torch.randn(8, 4)
    >>> with train_forward(net) as run:
    ...     a, b = run(x), run(x)
    >>> bool(torch.equal(a, b)), int(net[1].num_batches_tracked), net.training
    (True, 0, True)
"""
from __future__ import annotations

import contextlib
import functools
import inspect
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from surgery.core.inputs import as_inputs

__all__ = ["branches_on_training", "train_forward"]

_DROPOUTS = {F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout,
             torch.dropout, torch.alpha_dropout, torch.feature_dropout, torch.feature_alpha_dropout}
# functions that apply dropout inside (the mode does not see nested calls): (function, dropout_p position)
_INNER_DROPOUT = {F.scaled_dot_product_attention: 4, F.multi_head_attention_forward: 10}


def branches_on_training(model: nn.Module) -> bool:
    """Whether the code of any module class of ``model`` (other than torch.nn's own layers,
    whose train-mode behaviour is per channel) reads ``training``; True when a class's
    source cannot be read."""
    return any(_reads_training(type(m)) for m in model.modules())


@functools.lru_cache(maxsize=None)
def _reads_training(cls: type) -> bool:
    if cls.__module__.startswith(("torch.nn.", "torch.fx.")):
        return False
    for klass in cls.__mro__:
        if klass in (nn.Module, object) or klass.__module__.startswith(("torch.nn.", "torch.fx.")):
            continue
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            return True
        if "training" in source:
            return True
    return False


class _NoDropout(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in _DROPOUTS:
            return args[0] if args else kwargs["input"]
        if func in _INNER_DROPOUT:
            at = _INNER_DROPOUT[func]
            if len(args) > at:
                args = args[:at] + (0.0,) + args[at + 1:]
            else:
                kwargs["dropout_p"] = 0.0
        return func(*args, **kwargs)


@contextlib.contextmanager
def train_forward(model: nn.Module, seed: int = 0) -> Iterator[Callable[[Any], Any]]:
    """A function that runs ``model`` on example inputs in train mode, without gradients,
    dropout or lasting effects (each run reseeded with ``seed``); modes, buffers and the
    random generator's state are restored on exit."""
    modes = {m: m.training for m in model.modules()}
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    devices = sorted({b.device.index or 0 for b in list(model.parameters()) + list(model.buffers())
                      if b.device.type == "cuda"})

    def run(example_inputs: Any) -> Any:
        args, kwargs = as_inputs(example_inputs)
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            with _NoDropout():
                return model(*args, **kwargs)

    try:
        model.train()
        with torch.no_grad():
            yield run
    finally:
        for m, mode in modes.items():
            m.training = mode
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
