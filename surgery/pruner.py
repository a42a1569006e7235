"""``surgery.Pruner``: budgets, global ranking, targets and iterative schedules.

Example:
    >>> import torch, surgery
    >>> from models import create
    >>> x = torch.randn(1, 3, 32, 32)
    >>> pruner = surgery.Pruner(create("resnet56"), x, surgery.PruneConfig(ratio=0.5, iterative_steps=2))
    >>> for model in pruner.steps():
    ...     pass  # fine-tune `model` here
    >>> pruner.model.conv1.out_channels
    8
"""
from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn as nn

import criteria as _criteria
from surgery.groups import ChannelGraph, Group
from surgery.metrics import count_flops, count_params
from surgery.plan import Plan, plan_from_units
from surgery.prune import calibrate, check_ratio, verify_outputs
from surgery.rewrite import rewrite
from surgery.scoring import group_view
from surgery.trace import trace

__all__ = ["PruneConfig", "Pruner"]


@dataclass
class PruneConfig:
    """Settings of a :class:`Pruner` (all optional).

    ratio: fraction of each group's channels to remove (of all channels with global_pruning).
    criterion: a criteria name or object. normalize: per-group score normalisation used to
    rank across groups with global_pruning ("none", "mean", "max", "lamp").
    ratios: {module or name: ratio} for the groups those layers lead (their outputs).
    max_ratio / min_channels: no group loses more than max_ratio of its channels or keeps
    fewer than min_channels (never fewer than one). round_to: kept counts multiple of N.
    target_flops / target_params: fraction to keep instead of a ratio (fvcore FLOPs).
    iterative_steps / schedule: reach the final budget in steps ("linear", "exponential",
    or a callable (step, steps, final) -> fraction removed after that step).
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

    def validate(self) -> "PruneConfig":
        check_ratio(self.ratio)
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


class Pruner:
    """Plan and apply structured pruning under a budget, in one or several steps.

    ``plan()`` is a dry run; ``step()`` applies the next step; ``steps()`` yields the model
    after each step (fine-tune it inside the loop); ``run(on_step)`` does them all.
    """

    def __init__(self, model: nn.Module, example_inputs: Any, config: PruneConfig | None = None, *,
                 data: Any = None, max_batches: int | None = None, forward_fn: Callable | None = None,
                 loss_fn: Callable | None = None, **options):
        self.config = replace(config or PruneConfig(), **options).validate()
        self._data = dict(data=data, max_batches=max_batches, forward_fn=forward_fn, loss_fn=loss_fn)
        self.example_inputs = example_inputs
        self.criterion = _criteria.get(self.config.criterion)
        self._ratio_names = _names(model, self.config.ratios)
        self._ignored = list(_names(model, {k: 0 for k in self.config.ignored_layers}))
        self.model = model if self.config.inplace else copy.deepcopy(model)
        self.step_index = 0
        self.plans: list = []
        self._orig: dict = {}      # group anchor -> size before any step
        self._cost0: float | None = None

    # ------------------------------------------------------------------ public
    @property
    def done(self) -> bool:
        return self.step_index >= self.config.iterative_steps

    def plan(self) -> Plan:
        """What the next step would remove (nothing changes). ``print(plan.summary())``."""
        graph = self._trace()
        units = self._choose(graph, self.step_index + 1)
        plan = plan_from_units(graph, units, self.model)
        plan._context = (self.model, graph, self.example_inputs)
        return plan

    def step(self) -> nn.Module:
        """Apply the next step (scores recomputed on the current model)."""
        if self.done:
            raise RuntimeError(f"all {self.config.iterative_steps} steps are done")
        graph = self._trace()
        units = self._choose(graph, self.step_index + 1)
        self.plans.append(plan_from_units(graph, units, self.model))
        self.model = rewrite(self.model, graph, units, inplace=True)
        verify_outputs(graph, self.model, self.example_inputs)
        self.step_index += 1
        return self.model

    def steps(self) -> Iterator[nn.Module]:
        while not self.done:
            yield self.step()

    def run(self, on_step: Callable[[nn.Module, int], Any] | None = None) -> nn.Module:
        """All remaining steps; ``on_step(model, step)`` runs after each (fine-tuning)."""
        for model in self.steps():
            if on_step is not None:
                on_step(model, self.step_index)
        return self.model

    # ------------------------------------------------------------------ internals
    def _trace(self) -> ChannelGraph:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return trace(self.model, self.example_inputs, leaf_modules=self.config.leaf_modules,
                         ignored_layers=self._ignored)

    def _choose(self, graph: ChannelGraph, step: int) -> np.ndarray:
        opts = dict(self._data)
        calibrate(self.criterion, self.model, opts.pop("data"), **opts)  # on the current model
        for g in graph.prunable_groups:
            self._orig.setdefault(_anchor(g), g.size)
        c = self.config
        target = c.target_flops if c.target_flops is not None else c.target_params
        if target is None:
            return self._select(graph, scheduled(c.schedule, step, c.iterative_steps, c.ratio))
        goal = 1.0 - scheduled(c.schedule, step, c.iterative_steps, 1.0 - target)
        return self._search(graph, goal)

    def _search(self, graph: ChannelGraph, goal: float) -> np.ndarray:
        """Bisection on the ratio until the kept cost fraction is within 0.5% of ``goal``."""
        cost = self._cost
        if self._cost0 is None:
            self._cost0 = cost(self.model)
        lo, hi, best = 0.0, 0.999, None
        for _ in range(30):
            mid = (lo + hi) / 2
            units = self._select(graph, mid)
            kept = cost(rewrite(self.model, graph, units)) / self._cost0
            if best is None or abs(kept - goal) < abs(best[0] - goal):
                best = (kept, units)
            if abs(kept - goal) <= 0.005:
                break
            lo, hi = (mid, hi) if kept > goal else (lo, mid)
        if abs(best[0] - goal) > 0.02:
            warnings.warn(f"could only reach {best[0]:.1%} of the original cost (target {goal:.1%}); "
                          f"frozen groups, max_ratio or min_channels limit pruning", stacklevel=3)
        return best[1]

    def _cost(self, model: nn.Module) -> float:
        if self.config.target_params is not None:
            return float(count_params(model))
        return float(count_flops(model, self.example_inputs))

    def _select(self, graph: ChannelGraph, ratio: float) -> np.ndarray:
        fixed, pooled = [], []
        for g in graph.prunable_groups:
            r = self._explicit_ratio(g)
            (fixed if r is not None or not self.config.global_pruning else pooled).append((g, r))
        removed = [self._local(graph, g, ratio if r is None else self._scaled(r)) for g, r in fixed]
        if pooled:
            removed.append(self._global(graph, [g for g, _ in pooled], ratio))
        removed = [r for r in removed if len(r)]
        return np.concatenate(removed) if removed else np.zeros(0, dtype=np.int64)

    def _scaled(self, final: float) -> float:
        c = self.config
        return scheduled(c.schedule, self.step_index + 1, c.iterative_steps, final)

    def _explicit_ratio(self, g: Group) -> float | None:
        for m in g.producers or [m for m in g.members if m.role == "out"]:
            if m.name in self._ratio_names:
                return self._ratio_names[m.name]
        return None

    def _bounds(self, g: Group) -> tuple[int, int]:
        """(smallest allowed kept count, original size) of a group."""
        orig = self._orig.get(_anchor(g), g.size)
        floor_kept = max(self.config.min_channels, orig - math.floor(self.config.max_ratio * orig + 1e-9), 1)
        return min(floor_kept, orig), orig

    def _kept(self, g: Group, want_kept: int) -> int:
        low, orig = self._bounds(g)
        kept = max(want_kept, low)
        n = self.config.round_to
        if n and kept % n:
            up = math.ceil(kept / n) * n
            kept = up if up <= g.size else kept
        return min(kept, g.size)

    def _local(self, graph: ChannelGraph, g: Group, ratio: float) -> np.ndarray:
        _, orig = self._bounds(g)
        kept = self._kept(g, orig - math.floor(ratio * orig + 1e-9))
        n = g.size - kept
        if n <= 0:
            return np.zeros(0, dtype=np.int64)
        return g.units[self.criterion.select(group_view(graph, g), n).numpy()]

    def _global(self, graph: ChannelGraph, groups: list, ratio: float) -> np.ndarray:
        crit = _criteria.Normalized(self.criterion, self.config.normalize)
        total_orig = sum(self._bounds(g)[1] for g in groups)
        already = sum(self._bounds(g)[1] - g.size for g in groups)
        budget = math.floor(ratio * total_orig + 1e-9) - already
        if budget <= 0:
            return np.zeros(0, dtype=np.int64)
        entries = []
        for gi, g in enumerate(groups):
            scores = crit.score(group_view(graph, g)).double().numpy()
            entries += [(s, gi, u) for u, s in enumerate(scores)]
        entries.sort(key=lambda e: (e[0], e[1], e[2]))
        caps = [g.size - max(self._bounds(g)[0], 1) for g in groups]
        take = [[] for _ in groups]
        for s, gi, u in entries:
            if budget == 0:
                break
            if len(take[gi]) < caps[gi]:
                take[gi].append(u)
                budget -= 1
        out = []
        for g, picked in zip(groups, take):
            keep_n = self._kept(g, g.size - len(picked))
            out.append(g.units[np.asarray(picked[: g.size - keep_n], dtype=np.int64)])  # lowest scores
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def _anchor(g: Group) -> tuple:
    m = (g.producers or g.members)[0]
    return (m.name, m.role)


def _names(model: nn.Module, mapping: dict) -> dict:
    """{module or name: value} -> {name: value}, with errors that name the bad key."""
    by_id = {id(m): n for n, m in model.named_modules()}
    known = set(by_id.values())
    out = {}
    for key, value in mapping.items():
        if isinstance(key, str):
            if key not in known:
                raise ValueError(f"the model has no submodule named {key!r}")
            out[key] = value
        elif isinstance(key, nn.Module) and id(key) in by_id:
            out[by_id[id(key)]] = value
        else:
            raise TypeError(f"layers must be given as submodules of the model or their names; got {key!r}")
    return out
