"""Base class of data-driven criteria: calibrate on batches, then score channels.

A data criterion hooks every conv/linear/norm layer during :meth:`DataCriterion.calibrate`
and keeps per-channel running sums. Scoring a group reads the statistics of its
*sites*: by default the group's normalisation layers' outputs (BatchNorm), else its
producers' outputs; WANDA reads its consumers' inputs.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.nn as nn

from surgery.core.errors import ArgumentError
from surgery.criteria.base import Criterion, GroupView
from surgery.criteria.calibration import Stats, channel_dim, hookable, hooked, per_channel_view, run_batches

__all__ = ["DataCriterion", "InputCriterion", "out_rows"]

_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def out_rows(module: nn.Module, t: torch.Tensor) -> torch.Tensor:
    """A weight-shaped tensor as ``[output channels, k]`` (transposed convs included)."""
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        g = module.groups
        return t.reshape(g, t.shape[0] // g, t.shape[1], -1).permute(0, 2, 1, 3).reshape(g * t.shape[1], -1)
    return t.reshape(t.shape[0], -1)


class DataCriterion(Criterion):
    """Subclasses implement some of ``observe`` (layer outputs), ``observe_grad`` (outputs
    and their gradients), ``observe_params`` (after each backward), ``observe_input``
    (layer inputs), and ``channel_scores`` (statistics -> one score per channel)."""
    needs_data = True
    site = "activation"  # or "input" (the group's consumers' inputs)
    hook_outputs = True
    uses_param_grads = False

    def __init__(self) -> None:
        self._stats: Stats | None = None

    # -- calibration ---------------------------------------------------------
    def calibrate(self, model: nn.Module, data: Iterable, *, max_batches: int | None = None,
                  forward_fn: Callable | None = None, loss_fn: Callable | None = None,
                  device: Any = None) -> "DataCriterion":
        """Collect statistics over ``data`` (a DataLoader or list of ``(inputs, targets)``).

        Example:
            >>> import torch, torch.nn as nn
            >>> from criteria import Coverage
            >>> m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
            >>> c = Coverage().calibrate(m, [torch.randn(2, 3, 8, 8)])
            >>> c.score(m[1]).shape
            torch.Size([4])
        """
        modules = [m for m in model.modules() if hookable(m)]
        stats = Stats(modules)
        hooks = dict(forward=self._forward_hook(stats) if self.hook_outputs else None,
                     pre=self._pre_hook(stats) if self.site == "input" else None)
        after = (lambda: [stats.add(m, v) for m in modules if (v := self.observe_params(m))]) \
            if self.uses_param_grads else None
        with hooked(model, modules, needs_grad=self.needs_gradients, **hooks):
            run_batches(model, data, max_batches=max_batches, forward_fn=forward_fn, loss_fn=loss_fn,
                        backward=self.needs_gradients, device=device, on_batch=self.on_batch,
                        after_backward=after, desc=f"calibrating {self.name or type(self).__name__}")
        stats.all_reduce()
        self._stats = stats
        return self

    def on_batch(self, inputs: Any, targets: Any) -> None:
        self._targets = targets

    def _forward_hook(self, stats: Stats):
        def hook(module, inputs, output):
            if not isinstance(output, torch.Tensor):
                return
            dim = channel_dim(module, output)
            act = per_channel_view(output.detach().clone(), dim)  # before any in-place activation
            values = self.observe(module, act, output.detach())
            if values:
                stats.add(module, values)
            if self.needs_gradients and output.requires_grad and type(self).observe_grad is not DataCriterion.observe_grad:
                output.register_hook(lambda g: stats.add(module, self.observe_grad(module, act, per_channel_view(g, dim))))
        return hook

    def _pre_hook(self, stats: Stats):
        def hook(module, inputs):
            x = inputs[0] if inputs else None
            if isinstance(x, torch.Tensor):
                stats.add(module, self.observe_input(module, per_channel_view(x.detach(), channel_dim(module, x))))
        return hook

    # -- what subclasses observe ----------------------------------------------
    def observe(self, module: nn.Module, act: torch.Tensor, raw: torch.Tensor) -> dict:
        return {}

    def observe_grad(self, module: nn.Module, act: torch.Tensor, grad: torch.Tensor) -> dict:
        return {}

    def observe_params(self, module: nn.Module) -> dict:
        return {}

    def observe_input(self, module: nn.Module, x: torch.Tensor) -> dict:
        return {}

    def channel_scores(self, module: nn.Module, stats: dict) -> torch.Tensor:
        raise NotImplementedError

    # -- scoring --------------------------------------------------------------
    def sites(self, view: GroupView) -> list:
        """(module, index) pairs whose statistics score the group."""
        if self.site == "input":
            return view.layers("consumers")
        norms = [(m, i) for m, i in view.layers("per_channel")
                 if isinstance(m, _NORMS)]
        return norms or view.layers("producers")

    def stats_of(self, module: nn.Module) -> dict | None:
        if self._stats is None:
            raise ArgumentError(f"{type(self).__name__} needs data: call .calibrate(model, data) first, or "
                             f"pass data=... to surgery.prune")
        return self._stats.get(module)

    def score_group(self, view: GroupView) -> torch.Tensor:
        total = torch.zeros(view.size, dtype=torch.float64)
        found = False
        for module, index in self.sites(view):
            st = self.stats_of(module)
            if st is None:
                continue
            found = True
            total += per_unit(self.channel_scores(module, st), index, view.size)
        if not found:
            raise ArgumentError(f"{type(self).__name__}: no statistics for this group's layers; were they "
                             f"run during calibration (same model object)?")
        return total

    @property
    def state_bytes(self) -> int:
        """Memory held by the collected statistics."""
        return self._stats.nbytes() if self._stats is not None else 0


class InputCriterion(DataCriterion):
    """A data criterion that measures the *inputs* of a group's consumers (WANDA, activation
    norms): the channels a layer reads. Standalone, ``score(layer)`` scores the layer's input
    channels; remove them with ``surgery.layers.remove_kernels``."""
    site = "input"
    hook_outputs = False

    def view_of(self, target):
        """A layer is seen through its *input* channels."""
        if not isinstance(target, (nn.Linear, nn.modules.conv._ConvNd)):
            return super().view_of(target)
        if getattr(target, "groups", 1) != 1:
            raise ArgumentError(f"{self.name or type(self).__name__} on a single {type(target).__name__} supports "
                             f"groups=1 layers; use it through surgery.prune for grouped convs")
        w = target.weight.transpose(0, 1).reshape(target.weight.shape[1], -1)
        return GroupView(consumers=[w], modules={"consumers": [target]},
                         index={"consumers": [list(range(w.shape[0]))]})

    def consumer_stats(self, view: GroupView):
        """``(statistics, consumer weights [channels, k])`` of each consumer of the group."""
        if not view.consumers:
            raise ArgumentError(f"{self.name} scores the channels a layer reads: give it a Linear or Conv (its "
                             f"input channels) or a group with consuming layers; this one has none (its "
                             f"channels reach the model output)")
        for (module, index), weights in zip(self.sites(view), view.consumers):
            st = self.stats_of(module)
            if st is None:
                raise ArgumentError(f"{self.name}: no input statistics for {type(module).__name__}; calibrate "
                                 f"on the same model object first")
            yield {k: per_unit(v, index, view.size) if v.dim() else v for k, v in st.items()}, weights


def per_unit(scores: torch.Tensor, index: np.ndarray, size: int) -> torch.Tensor:
    """Sum per-position scores into the group's channels (positions with index -1 skipped)."""
    idx = torch.as_tensor(np.asarray(index), dtype=torch.long)
    keep = idx >= 0
    out = torch.zeros(size, dtype=torch.float64)
    return out.index_add_(0, idx[keep], scores.double().cpu()[keep])
