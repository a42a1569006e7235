"""Layer-by-layer surgery on a model, in place, with coupled layers following."""
from __future__ import annotations

import warnings
from dataclasses import replace
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn

import surgery.criteria as _criteria
from surgery.groups.graph import ChannelGraph, Group
from surgery.plan import record, touched_layers
from surgery.core.inputs import layer_name
from surgery.plan import plan_from_units
from surgery.pruner import calibrate
from surgery.select.selection import n_remove, select_units, units_for_positions
from surgery.core.config import PruneConfig
from surgery.core.indices import channel_indices
from surgery.core.errors import ArgumentError, ArgumentTypeError, InPlaceError
from surgery.groups.build import trace
from surgery.core.transaction import transaction
from surgery.rewrite.verify import checked_rewrite

__all__ = ["Surgeon"]


class Surgeon:
    """Edit ``model`` in place one layer at a time; the model is valid after every call.

    Removing a layer's output channels also removes them from everything coupled to
    them (following BatchNorm, the next layers' input kernels, residual partners).
    Every edit is all or nothing: on any error the model is exactly as it was.

    Example:
        >>> import torch, surgery
        >>> from models import create
        >>> model = create("vgg16_bn")
        >>> s = surgery.Surgeon(model, torch.randn(1, 3, 32, 32))
        >>> s.prune_layer(model.features[0], 0.25)
        >>> model.features[0].out_channels, model.features[1].num_features, model.features[3].in_channels
        (48, 48, 48)
    """

    def __init__(self, model: nn.Module, example_inputs: Any, config: PruneConfig | None = None,
                 **options: Any) -> None:
        """``options`` are :class:`surgery.PruneConfig` fields; a Surgeon reads those that say how
        to trace and check (``leaf_modules``, ``ignored_layers``, ``attention``, ``tracer``,
        ``verify``). It always edits ``model`` itself."""
        if not isinstance(model, nn.Module):
            raise ArgumentTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        PruneConfig.check_names(options)
        self.config = replace(config or PruneConfig(), **options)
        self.model, self.example_inputs, self.verification = model, example_inputs, None
        self.graph = self._trace()

    def _trace(self) -> ChannelGraph:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            c = self.config
            return trace(self.model, self.example_inputs, leaf_modules=c.leaf_modules,
                         ignored_layers=c.ignored_layers, attention=c.attention, tracer=c.tracer)

    def _members(self, name: str) -> list:
        return [(g, m) for g in self.graph.groups for m in g.members if m.name == name and m.role == "out"]

    def group_of(self, layer: nn.Module | str) -> Group:
        """The group that removing this layer's output channels would touch (several
        groups, e.g. a layer whose outputs are split, are shown merged)."""
        name = layer_name(self.model, layer)
        found = self._members(name)
        if not found:
            raise ArgumentError(f"'{name}' has no output channels the engine tracks "
                             f"({type(self.graph.gm.get_submodule(name)).__name__})")
        return found[0][0] if len(found) == 1 else _merged(found)

    def remove_channels(self, layer: nn.Module | str, indices: Sequence[int] | torch.Tensor) -> None:
        """Remove output channels ``indices`` of ``layer`` and everything coupled to them."""
        name = layer_name(self.model, layer)
        self._apply(self._units(name, channel_indices(indices, where=f"indices for '{name}'")))

    def prune_layer(self, layer: nn.Module | str, ratio: float, criterion: Any = "l1", *,
                    data: Any = None, **calibration: Any) -> None:
        """Remove ``floor(ratio * size)`` channels of the layer's group, chosen by ``criterion``
        (data criteria calibrate on ``data`` first, with ``max_batches``/``forward_fn``/``loss_fn``)."""
        name = layer_name(self.model, layer)
        crit = _criteria.get(criterion)
        self.group_of(name)  # explains a layer without tracked outputs
        calibrate(crit, self.model, data, **calibration)
        removed = []
        for group, _ in self._members(name):
            self._check_prunable(name, group)
            removed.append(select_units(self.graph, group, crit, n_remove(group.size, ratio)))
        removed = [r for r in removed if len(r)]
        if removed:
            self._apply(np.concatenate(removed))

    def _check_prunable(self, name: str, group: Group) -> None:
        if not group.prunable:
            raise ArgumentError(f"the output channels of '{name}' cannot be removed: {group.reason}")

    def _units(self, name: str, idx: np.ndarray) -> np.ndarray:
        found = self._members(name)
        if not found:
            self.group_of(name)
        size = len(found[0][1].unit_index)
        if not len(idx) or idx[0] < 0 or idx[-1] >= size:
            raise ArgumentError(f"'{name}' has {size} output channels; got indices {idx.tolist()}")
        units = []
        for group, member in found:
            mine = idx[member.unit_index[idx] >= 0]
            if len(mine):
                self._check_prunable(name, group)
                units.append(group.units[units_for_positions(group, member, mine, f"'{name}'")])
        return np.concatenate(units)

    def _apply(self, units: np.ndarray) -> None:
        """Rewrite in place and trace the result; on any error (the trace of the pruned model
        included) the model is restored exactly as it was."""
        plan = plan_from_units(self.graph, units, self.model)
        with transaction(self.model):
            try:
                new, verification = checked_rewrite(self.model, self.graph, units, self.example_inputs,
                                                    inplace=True, verify_exact=self.config.verify,
                                                    strict=self.config.verify_dtype == "float64")
            except InPlaceError as err:
                raise InPlaceError(f"{err}. Surgeon edits your object in place: prune this layer with "
                                   f"surgery.prune(..., inplace=False) or a Pruner instead") from None
            record(new, self.model, plan, touched_layers(self.graph, units))
            graph = self._trace()
        self.graph, self.verification = graph, verification


def _merged(found: list) -> Group:
    members = [m for g, _ in found for m in g.members]
    units = np.concatenate([g.units for g, _ in found])
    prunable = all(g.prunable for g, _ in found)
    reason = next((g.reason for g, _ in found if not g.prunable), None)
    return Group(found[0][0].index, units, members, prunable, reason)
