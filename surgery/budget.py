"""Budgets: how many units each group loses (ratios, bounds, rounding, global ranking,
schedules, cost targets). Which units go is :mod:`surgery.selection`'s business.

Example:
    >>> config = PruneConfig(ratio=0.5, round_to=4).validate()
    >>> scheduled("linear", 1, 2, 0.5)
    0.25
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch.nn as nn

import surgery.criteria as _criteria
from surgery.blocks import check_skip_blocks, skipped_blocks
from surgery.groups import ChannelGraph, Group
from surgery.inputs import layer_names
from surgery.selection import group_view

__all__ = ["PruneConfig", "Budget", "check_ratio", "scheduled"]


def check_ratio(ratio: Any, name: str = "ratio") -> float:
    """``ratio`` as a float in [0, 1), or a TypeError/ValueError naming ``name``."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)):
        raise TypeError(f"{name} must be a number in [0, 1), got {ratio!r}")
    if not 0.0 <= ratio < 1.0 or math.isnan(ratio):
        raise ValueError(f"{name} must be in [0, 1) (the fraction of channels to remove), got {ratio}")
    return float(ratio)


@dataclass
class PruneConfig:
    """Settings of a :class:`surgery.Pruner` (all optional).

    ratio: fraction of each group's channels to remove (of all channels with global_pruning).
    criterion: a criteria name or object. normalize: per-group score normalisation used to
    rank across groups with global_pruning ("none", "mean", "max", "lamp").
    ratios: {module or name: ratio} for the groups those layers lead (their outputs); a
    container module (``model.layer1``) sets every layer inside it.
    max_ratio / min_channels: no group loses more than max_ratio of its channels or keeps
    fewer than min_channels (never fewer than one). round_to: kept counts multiple of N.
    target_flops / target_params: fraction to keep instead of a ratio (fvcore FLOPs).
    iterative_steps / schedule: reach the final budget in steps ("linear", "exponential",
    or a callable (step, steps, final) -> fraction removed after that step).
    attention: "dims" (every head loses the same head dims) or "heads" (whole heads go).
    head_ratio: fraction of the heads to remove in head groups (default: ``ratio``).
    skip_blocks: ``(first, last)`` (or one number for both): the first and last blocks of the
    model's stack of repeated blocks (``surgery.blocks.repeated_blocks``: LLaMA's
    ``model.layers``, ViT's ``blocks``) keep every channel they produce; groups produced
    partly outside them (the residual stream) are still pruned.
    tracer: "auto" (torch.fx, then torch.export when fx fails), "fx" or "export".
    inplace: edit the given model (all or nothing) instead of returning a pruned copy.
    verify: check the rewrite against the original with the removed channels masked
    (``surgery.VerificationError`` on a mismatch); False checks output shapes only.
    """
    ratio: float = 0.5
    criterion: Any = "l1"
    global_pruning: bool = False
    normalize: str = "mean"
    ratios: dict = field(default_factory=dict)
    max_ratio: float = 1.0
    min_channels: int = 1
    round_to: int | None = None
    ignored_layers: tuple = ()
    leaf_modules: tuple = ()
    target_flops: float | None = None
    target_params: float | None = None
    iterative_steps: int = 1
    schedule: str | Callable = "linear"
    inplace: bool = False
    verify: bool = True
    attention: str = "dims"
    head_ratio: float | None = None
    skip_blocks: tuple = (0, 0)
    tracer: str = "auto"

    def validate(self) -> "PruneConfig":
        check_ratio(self.ratio)
        if self.head_ratio is not None:
            check_ratio(self.head_ratio, "head_ratio")
        if self.attention not in ("dims", "heads"):
            raise ValueError(f"attention must be 'dims' (prune head dims) or 'heads' (remove whole heads), "
                             f"got {self.attention!r}")
        self.skip_blocks = check_skip_blocks(self.skip_blocks)
        if self.tracer not in ("auto", "fx", "export"):
            raise ValueError(f"tracer must be 'auto', 'fx' or 'export', got {self.tracer!r}")
        for key, r in self.ratios.items():
            check_ratio(r, f"ratios[{key!r}]")
        if not 0.0 < self.max_ratio <= 1.0:
            raise ValueError(f"max_ratio must be in (0, 1] (largest fraction a group may lose), got {self.max_ratio}")
        for name in ("min_channels", "iterative_steps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.round_to is not None and (not isinstance(self.round_to, int) or self.round_to < 1):
            raise ValueError(f"round_to must be a positive integer or None, got {self.round_to!r}")
        if self.target_flops is not None and self.target_params is not None:
            raise ValueError("set either target_flops or target_params, not both")
        for name in ("target_flops", "target_params"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, (int, float)) and 0.0 < v <= 1.0):
                raise ValueError(f"{name} must be in (0, 1] (the fraction to keep), got {v!r}")
        if self.schedule not in ("linear", "exponential") and not callable(self.schedule):
            raise ValueError(f"schedule must be 'linear', 'exponential' or a callable, got {self.schedule!r}")
        if self.normalize not in ("none", "mean", "max", "lamp"):
            raise ValueError(f"normalize must be one of none, mean, max, lamp; got {self.normalize!r}")
        return self

    def to_dict(self) -> dict:
        """Plain values (layers by name; a criterion object or callable schedule cannot be
        written and raises): what ``from_dict`` and YAML files hold."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name in ("criterion", "schedule") and not isinstance(v, str):
                raise ValueError(f"{f.name}={v!r} is an object; only names can be written to a config file")
            if isinstance(v, tuple):
                v = list(v)
            if f.name == "ratios":
                v = {k if isinstance(k, str) else repr(k): r for k, r in v.items()}
            out[f.name] = v
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "PruneConfig":
        """A validated config from plain values; an unknown key raises naming the closest one."""
        if not isinstance(data, dict):
            raise TypeError(f"a PruneConfig is read from a dict, got {type(data).__name__}")
        known = cls.fields()
        for key in data:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(known)}"
                raise ValueError(f"unknown PruneConfig key {key!r}{hint}")
        values = {k: tuple(v) if k in ("ignored_layers", "leaf_modules", "skip_blocks") and not isinstance(v, int)
                  else v for k, v in data.items()}
        return cls(**values).validate()

    @classmethod
    def from_yaml(cls, path: str) -> "PruneConfig":
        """``PruneConfig.from_dict`` of a YAML file (PyYAML)."""
        import yaml
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(yaml.safe_load(f) or {})

    def to_yaml(self, path: str) -> None:
        import yaml
        with open(path, "w", encoding="utf-8") as f:
            yaml.safe_dump(self.to_dict(), f, sort_keys=False)

    @property
    def target(self) -> float | None:
        return self.target_flops if self.target_flops is not None else self.target_params

    @classmethod
    def fields(cls) -> list:
        return [f.name for f in dataclasses.fields(cls)]


def scheduled(schedule: str | Callable, step: int, steps: int, final: float) -> float:
    """Fraction removed after ``step`` of ``steps`` when ``final`` is removed at the end."""
    if callable(schedule):
        value = float(schedule(step, steps, final))
    elif schedule == "linear":
        value = final * step / steps
    else:  # exponential: the same fraction of what is left at every step
        value = 1.0 - (1.0 - final) ** (step / steps)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"schedule returned {value} for step {step}/{steps}; expected a fraction in [0, 1]")
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
        if c.normalize == "lamp" and not c.global_pruning and c.normalize != PruneConfig.normalize:
            warnings.warn("normalize='lamp' only changes how groups are ranked against each other: it has "
                          "no effect without global_pruning=True", stacklevel=5)
        for name in self._ratios:
            inside = [g for g in graph.groups for m in (g.producers or g.members)
                      if m.name == name or m.name.startswith(name + ".") or name == ""]
            if inside and not any(g.prunable for g in inside):
                reason = next(g.reason for g in inside)
                warnings.warn(f"ratios[{name!r}] has no effect: the channels of {name!r} are frozen ({reason})",
                              stacklevel=5)
            elif not inside:
                warnings.warn(f"ratios[{name!r}] has no effect: no channel group is produced there", stacklevel=5)

    def counts(self, graph: ChannelGraph, ratio: float, step: int, scorer: _criteria.Criterion) -> dict:
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
            fixed.update(self._global(graph, pooled, ratio, scorer))
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

    def _global(self, graph: ChannelGraph, groups: list, ratio: float, scorer) -> dict:
        """Rank every unit of ``groups`` by normalised score; the lowest ``ratio`` of all go."""
        budget = _floor(ratio * sum(self.original(g) for g in groups)) - sum(self.original(g) - g.size for g in groups)
        if budget <= 0:
            return {}
        scores = [scorer.score(group_view(graph, g)).double().numpy() for g in groups]
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
