"""Budgets: how many units each group loses (ratios, bounds, rounding, global ranking,
schedules, cost targets). Which units go is :mod:`surgery.select.selection`'s business.

Example:
    >>> scheduled("linear", 1, 2, 0.5)
    0.25
"""
from __future__ import annotations

import math
import warnings
from typing import Callable

import numpy as np
import torch.nn as nn

from surgery.core.frames import user_stacklevel
from surgery.core.errors import ArgumentError
import surgery.criteria as _criteria
from surgery.criteria.base import checked_scores
from surgery.core.config import PruneConfig
from surgery.select.blocks import skipped_blocks
from surgery.groups.graph import ChannelGraph, Group
from surgery.core.inputs import layer_names
from surgery.select.selection import group_view

__all__ = ["Budget", "scheduled"]


def scheduled(schedule: str | Callable, step: int, steps: int, final: float) -> float:
    """Fraction removed after ``step`` of ``steps`` when ``final`` is removed at the end."""
    if callable(schedule):
        value = float(schedule(step, steps, final))
    elif schedule == "linear":
        value = final * step / steps
    else:  # exponential: the same fraction of what is left at every step
        value = 1.0 - (1.0 - final) ** (step / steps)
    if not 0.0 <= value <= 1.0:
        raise ArgumentError(f"schedule returned {value} for step {step}/{steps}; expected a fraction in [0, 1]")
    return value


class Budget:
    """Per-group removal counts under a config; remembers each group's original size so
    bounds hold across iterative steps. ``counts(graph, ratio, step, scorer)`` returns
    ``{group index: units to remove}``."""

    def __init__(self, model: nn.Module, config: PruneConfig) -> None:
        self.config = config
        self._ratios = dict(zip(layer_names(model, config.ratios, "ratios"), config.ratios.values()))
        self._skipped = skipped_blocks(model, config.skip_blocks)
        self._orig: dict = {}  # group anchor (name, role) -> size before any step

    def remember(self, graph: ChannelGraph) -> None:
        first = not self._orig
        for g in graph.prunable_groups:
            self._orig.setdefault(_key(g), g.size)
        if first:
            self._warn_unused(graph)

    def _warn_unused(self, graph: ChannelGraph) -> None:
        """Options that would silently do nothing on this model say so (once)."""
        c = self.config
        if c.normalize in ("lamp", "flops", "latency") and not c.global_pruning:
            warnings.warn(f"normalize={c.normalize!r} only changes how groups are ranked against each other: it has "
                          "no effect without global_pruning=True", stacklevel=user_stacklevel())
        for name in self._ratios:
            inside = [g for g in graph.groups for m in (g.producers or g.members)
                      if m.name == name or m.name.startswith(name + ".") or name == ""]
            if inside and not any(g.prunable for g in inside):
                reason = next(g.reason for g in inside)
                warnings.warn(f"ratios[{name!r}] has no effect: the channels of {name!r} are frozen ({reason})",
                              stacklevel=user_stacklevel())
            elif not inside:
                warnings.warn(f"ratios[{name!r}] has no effect: no channel group is produced there", stacklevel=user_stacklevel())

    def counts(self, graph: ChannelGraph, ratio: float, step: int, scorer: _criteria.Criterion,
               unit_cost: dict | None = None) -> dict:
        fixed, pooled = {}, []
        for g in graph.prunable_groups:
            r = self.explicit_ratio(g)
            if r is None and self.config.global_pruning and not (g.heads and self.config.head_ratio is not None):
                pooled.append(g)
            else:
                if r is None and g.heads and self.config.head_ratio is not None:
                    r = self.config.head_ratio
                final = ratio if r is None else self._scaled(r, step)
                fixed[g.index] = g.size - self._kept(g, self.original(g) - _floor(final * self.original(g)))
        if pooled:
            fixed.update(self._global(graph, pooled, ratio, scorer, unit_cost))
        return {i: n for i, n in fixed.items() if n > 0}

    def original(self, g: Group) -> int:
        return self._orig.get(_key(g), g.size)

    def explicit_ratio(self, g: Group) -> float | None:
        """0 when every layer producing the group is in a skipped block, else the ``ratios``
        entry of the layer (or innermost container) producing the group."""
        makers = g.producers or [m for m in g.members if m.role == "out"]
        if self._skipped and makers and all(any(_inside(m.name, b) for b in self._skipped) for m in makers):
            return 0.0
        best, depth = None, -1
        for m in makers:
            for name, r in self._ratios.items():
                inside = name == "" or m.name == name or m.name.startswith(name + ".")
                if inside and name.count(".") + bool(name) > depth:
                    best, depth = r, name.count(".") + bool(name)
        return best

    def _scaled(self, final: float, step: int) -> float:
        return scheduled(self.config.schedule, step, self.config.iterative_steps, final)

    def _floor_kept(self, g: Group) -> int:
        orig = self.original(g)
        low = max(self.config.min_channels, orig - _floor(self.config.max_ratio * orig), 1)
        return min(low, orig)

    def _kept(self, g: Group, want_kept: int) -> int:
        kept = max(want_kept, self._floor_kept(g))
        n = self.config.round_to
        if n and kept % n:
            up = math.ceil(kept / n) * n
            kept = up if up <= g.size else kept
        return min(kept, g.size)

    def _global(self, graph: ChannelGraph, groups: list, ratio: float, scorer, unit_cost: dict | None = None) -> dict:
        """Rank every unit of ``groups`` by normalised score (divided by the cost one of its units
        saves, with ``unit_cost``); the lowest ``ratio`` of all go."""
        budget = _floor(ratio * sum(self.original(g) for g in groups)) - sum(self.original(g) - g.size for g in groups)
        if budget <= 0:
            return {}
        views = [group_view(graph, g) for g in groups]
        scores = [checked_scores(scorer, v, scorer.score(v)).double().numpy() for v in views]
        if unit_cost is not None:  # importance per unit of cost saved: cheap-to-lose compute goes first
            scores = [s / max(unit_cost[g.index], 1e-12) for s, g in zip(scores, groups)]
        owner = np.concatenate([np.full(len(s), i) for i, s in enumerate(scores)])
        order = np.lexsort((np.concatenate([np.arange(len(s)) for s in scores]), owner, np.concatenate(scores)))
        caps = [g.size - self._floor_kept(g) for g in groups]
        taken = [0] * len(groups)
        for gi in owner[order].tolist():
            if budget == 0:
                break
            if taken[gi] < caps[gi]:
                taken[gi] += 1
                budget -= 1
        return {g.index: g.size - self._kept(g, g.size - t) for g, t in zip(groups, taken)}


def _key(g: Group) -> tuple:
    return (g.anchor.name, str(g.anchor.role))


def _inside(name: str, container: str) -> bool:
    return name == container or name.startswith(container + ".")


def _floor(x: float) -> int:
    return int(math.floor(x + 1e-9))
