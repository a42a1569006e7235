"""Running a model in train mode for verification: code under ``if self.training:`` is checked too.

The traced graph and the eval-mode comparison see one branch of a forward that branches on
``self.training`` (auxiliary heads, stochastic depth, a different path): the other branch
would go unchecked. :func:`branches_on_training` says whether the model computes something
else in train mode (its fx graphs in the two modes differ); :func:`train_forward` runs a model in train mode so that two runs (the masked
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
from typing import Any, Callable, Iterator

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from surgery.capture.fx import symbolic_trace, unlinked
from surgery.core.inputs import as_inputs, evaluating
from surgery.core.transaction import untouched

__all__ = ["branches_on_training", "train_forward"]

_DROPOUTS = {F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout,
             torch.dropout, torch.alpha_dropout, torch.feature_dropout, torch.feature_alpha_dropout}
# functions that apply dropout inside (the mode does not see nested calls): (function, dropout_p position)
_INNER_DROPOUT = {F.scaled_dot_product_attention: 4, F.multi_head_attention_forward: 10}


def branches_on_training(model: nn.Module, example_inputs: Any = None, traced: fx.Graph | None = None) -> bool:
    """Whether ``model`` computes something else in train mode, decided by its graphs, not by
    its source text: torch.fx captures it in train and in eval mode and the two graphs are
    compared (a read of ``training`` anywhere in the call tree, a helper function's included,
    changes what is captured). When fx cannot capture it, one eval forward on
    ``example_inputs`` records whether any module outside torch.nn has its ``training`` read
    (torch.nn's own layers behave per channel in train mode). True when neither can tell."""
    try:
        return _graphs_differ(model, traced)
    except Exception:  # fx cannot trace this model
        pass
    if example_inputs is not None:
        try:
            return _reads_training_when_run(model, example_inputs)
        except Exception:
            pass
    return True


def _graphs_differ(model: nn.Module, traced: fx.Graph | None = None) -> bool:
    """``traced``: the model's graph as already captured in its current mode (saves a trace)."""
    modes = {m: m.training for m in model.modules()}
    try:
        graphs = []
        for train in (False, True):
            if traced is not None and train == model.training:
                graphs.append(_signature_of(traced))
                continue
            model.train(train)
            graphs.append(_signature_of(unlinked(symbolic_trace(model))))
    finally:
        for m, mode in modes.items():
            m.training = mode
    return graphs[0] != graphs[1]


def _signature_of(graph: fx.Graph) -> list:
    return [(n.op, getattr(n.target, "__qualname__", str(n.target)), repr(n.args), repr(n.kwargs))
            for n in graph.nodes]


def _reads_training_when_run(model: nn.Module, example_inputs: Any) -> bool:
    """Run once in eval mode with every user module's ``training`` recorded when read."""
    reads = _Reads()  # not a list: restoring the model's containers after the run must not empty it
    swapped = [(m, type(m)) for m in model.modules() if not type(m).__module__.startswith("torch.")]
    for m, cls in swapped:
        value = m.__dict__.pop("training")
        m.__class__ = _recording(cls)
        m.__dict__["_surgery_training"], m.__dict__["_surgery_reads"] = value, reads
    try:
        args, kwargs = as_inputs(example_inputs)
        with untouched(model), evaluating(model), torch.no_grad():
            reads.count = 0  # setting the mode read it; only the forward's reads count
            model(*args, **kwargs)
    finally:
        for m, cls in swapped:
            m.__class__ = cls
            m.__dict__["training"] = m.__dict__.pop("_surgery_training")
            m.__dict__.pop("_surgery_reads", None)
    return reads.count > 0


class _Reads:
    count = 0


@functools.lru_cache(maxsize=None)
def _recording(cls: type) -> type:
    """A subclass of ``cls`` whose ``training`` attribute notes each read."""
    def get(self):
        self.__dict__["_surgery_reads"].count += 1
        return self.__dict__["_surgery_training"]

    def put(self, value):
        self.__dict__["_surgery_training"] = value
    return type(cls.__name__, (cls,), {"training": property(get, put), "__module__": cls.__module__,
                                       "__qualname__": cls.__qualname__})


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
