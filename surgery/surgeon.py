"""Layer-by-layer surgery on a model, in place, with coupled layers following."""
from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn

import criteria as _criteria
from surgery.groups import ChannelGraph, Group
from surgery.prune import verify_outputs
from surgery.rewrite import rewrite
from surgery.scoring import group_view
from surgery.trace import trace

__all__ = ["Surgeon"]


class Surgeon:
    """Edit ``model`` in place one layer at a time; the model is valid after every call.

    Removing a layer's output channels also removes them from everything coupled to
    them (following BatchNorm, the next layers' input kernels, residual partners).

    Example:
        >>> import torch, surgery
        >>> from models import create
        >>> model = create("vgg16_bn")
        >>> s = surgery.Surgeon(model, torch.randn(1, 3, 32, 32))
        >>> s.prune_layer(model.features[0], 0.25)
        >>> model.features[0].out_channels, model.features[1].num_features, model.features[3].in_channels
        (48, 48, 48)
    """

    def __init__(self, model: nn.Module, example_inputs: Any, *, leaf_modules: Sequence = ()) -> None:
        self.model, self.example_inputs, self.leaf_modules = model, example_inputs, tuple(leaf_modules)
        self.graph = self._trace()

    def _trace(self) -> ChannelGraph:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return trace(self.model, self.example_inputs, leaf_modules=self.leaf_modules)

    def _name(self, layer: nn.Module | str) -> str:
        names = {id(m): n for n, m in self.model.named_modules()}
        if isinstance(layer, str):
            if layer not in names.values():
                raise ValueError(f"the model has no submodule named {layer!r}")
            return layer
        if id(layer) not in names:
            raise ValueError(f"{type(layer).__name__} is not a submodule of the model being edited "
                             f"(after an edit, fetch layers again from surgeon.model)")
        return names[id(layer)]

    def _member(self, name: str):
        for g in self.graph.groups:
            for m in g.members:
                if m.name == name and m.role == "out":
                    yield g, m

    def group_of(self, layer: nn.Module | str) -> Group:
        """The group that removing this layer's output channels would touch."""
        name = self._name(layer)
        found = list(self._member(name))
        if not found:
            raise ValueError(f"'{name}' has no output channels the engine tracks "
                             f"({type(self.graph.gm.get_submodule(name)).__name__})")
        if len(found) > 1:
            return _merged(found)
        return found[0][0]

    def remove_channels(self, layer: nn.Module | str, indices: Sequence[int]) -> None:
        """Remove output channels ``indices`` of ``layer`` and everything coupled to them."""
        name = self._name(layer)
        idx = sorted({int(i) for i in indices})
        units = self._units(name, idx)
        self._apply(units)

    def prune_layer(self, layer: nn.Module | str, ratio: float, criterion: Any = "l1") -> None:
        """Remove ``floor(ratio * size)`` channels of the layer's group, chosen by ``criterion``."""
        name = self._name(layer)
        crit = _criteria.get(criterion)
        removed = []
        for group, _ in self._member(name):
            self._check_prunable(name, group)
            k = _criteria.n_remove(group.size, ratio)
            if k:
                removed.append(group.units[crit.select(group_view(self.graph, group), k).numpy()])
        if not removed and not list(self._member(name)):
            self.group_of(name)  # raises the explanation
        if removed:
            self._apply(np.concatenate(removed))

    def _check_prunable(self, name: str, group: Group) -> None:
        if not group.prunable:
            raise ValueError(f"the output channels of '{name}' cannot be removed: {group.reason}")

    def _units(self, name: str, idx: list) -> np.ndarray:
        found = list(self._member(name))
        if not found:
            self.group_of(name)
        size = len(found[0][1].unit_index)
        if not idx or idx[0] < 0 or idx[-1] >= size:
            raise ValueError(f"'{name}' has {size} output channels; got indices {idx}")
        units, wanted = [], set(idx)
        for group, member in found:
            hit = np.unique(member.unit_index[idx])
            hit = hit[hit >= 0]
            if not len(hit):
                continue
            self._check_prunable(name, group)
            covered = set(np.nonzero(np.isin(member.unit_index, hit))[0].tolist())
            if not covered <= wanted:
                raise ValueError(f"channels {sorted(covered)} of '{name}' must be removed together "
                                 f"(coupled by {_coupling(group)}); pass all of them")
            if len(hit) >= group.size:
                raise ValueError(f"cannot remove every channel of '{name}'s group; keep at least one")
            units.append(group.units[hit])
        return np.concatenate(units)

    def _apply(self, units: np.ndarray) -> None:
        """Rewrite in place; on any error the model is restored exactly as it was."""
        saved = [(m, dict(m._parameters), dict(m._buffers), dict(m._modules), dict(vars(m)))
                 for m in self.model.modules()]
        try:
            new = rewrite(self.model, self.graph, units, inplace=True)
            verify_outputs(self.graph, new, self.example_inputs)
        except Exception:
            for m, params, buffers, modules, attrs in saved:
                m.__dict__.update(attrs)
                m._parameters, m._buffers, m._modules = params, buffers, modules
            raise
        self.model = new
        self.graph = self._trace()


def _coupling(group: Group) -> str:
    return ", ".join(sorted({m.name for m in group.members}))[:200]


def _merged(found: list) -> Group:
    members = [m for g, _ in found for m in g.members]
    units = np.concatenate([g.units for g, _ in found])
    prunable = all(g.prunable for g, _ in found)
    reason = next((g.reason for g, _ in found if not g.prunable), None)
    return Group(found[0][0].index, units, members, prunable, reason)
