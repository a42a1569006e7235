"""``surgery.prune`` and ``surgery.Pruner``: budgets, global ranking, targets, iterative steps.

``prune(model, x, ratio=...)`` is ``Pruner(model, x, ratio=...).step()``: one path selects
units (:func:`surgery.select.selection.select_units`), rewrites, checks and records history.

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

import contextlib
import copy
import warnings
from dataclasses import replace
from typing import Any, Callable, Iterator

import numpy as np
import torch.fx as fx
import torch.nn as nn

import surgery.criteria as _criteria
from surgery.core.frames import user_stacklevel
from surgery.select.cost import CostModel
from surgery.core.config import PruneConfig
from surgery.core.errors import ArgumentError, ArgumentTypeError
from surgery.core.inputs import input_spec
from surgery.select.budget import Budget, scheduled
from surgery.groups.graph import ChannelGraph
from surgery.plan import record, touched_layers
from surgery.core.metrics import count_flops, count_params
from surgery.plan import Plan, plan_from_units
from surgery.reporting.report import Report, report
from surgery.repair.recalibrate import recalibrate
from surgery.repair.reconstruct import KEEPS, reconstruct
from surgery.rewrite.rebuild import keep_indices, rewrite
from surgery.select.selection import EMPTY, Remembered, select_units
from surgery.groups.build import trace
from surgery.capture.fx import unlinked
from surgery.groups.rebind import rebind, structure
from surgery.rewrite.verify import FailsToRun, Verification, checked_rewrite

__all__ = ["prune", "Pruner", "PruneConfig", "calibrate"]


def prune(model: nn.Module, example_inputs: Any, config: PruneConfig | None = None, *, data: Any = None,
          max_batches: int | None = None, forward_fn: Callable | None = None, loss_fn: Callable | None = None,
          **options: Any) -> nn.Module:
    """Remove ``floor(ratio * size)`` channels from every prunable group (one step).

    ``options`` are :class:`surgery.PruneConfig` fields (``ratio``, ``criterion``,
    ``ignored_layers``, ``attention``, ``target_flops``, ...; ``help(surgery.PruneConfig)``
    lists them), given on their own or over a ``config``; ``ratio`` (or a target) is required.
    Channels that reach a model output are never pruned, so the classifier needs no
    listing. The user's model is left untouched unless ``inplace=True``. Data criteria
    ("taylor", "coverage", ...) calibrate on ``data`` (batches of ``(inputs, targets)``, at
    most ``max_batches``; ``forward_fn(model, batch) -> (output, targets)`` and ``loss_fn``
    for other batch shapes and losses). Same as ``Pruner(...).step()`` with one step.
    With ``verify=True`` (the default) the result is checked against the original with the
    removed channels masked (``surgery.VerificationError`` on a mismatch; see README "Correctness").

    Example:
        >>> import torch, surgery
        >>> from models import create
        >>> model = create("resnet20")
        >>> small = surgery.prune(model, torch.randn(1, 3, 32, 32), ratio=0.5)
        >>> sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
        True
    """
    if config is None and not {"ratio", "target_flops", "target_params"} & set(options):
        raise ArgumentTypeError("prune() needs ratio= (the fraction of channels to remove), or target_flops= / "
                                "target_params= (the fraction to keep), or a PruneConfig")
    pruner = Pruner(model, example_inputs, config, data=data, max_batches=max_batches, forward_fn=forward_fn,
                    loss_fn=loss_fn, **options)
    try:
        return pruner.step()
    finally:
        pruner.release()


def calibrate(criterion: _criteria.Criterion, model: nn.Module, data: Any, repairs: bool = False,
              **options: Any) -> None:
    """Run a data criterion's calibration (weight criteria take no data, unless ``repairs``
    (recalibration, reconstruction) will use it)."""
    if criterion.needs_data:
        if data is None:
            raise ArgumentError(f"criterion {type(criterion).__name__} needs data: pass data=<DataLoader or "
                             f"list of (inputs, targets)> (and max_batches=... to limit it)")
        criterion.calibrate(model, data, **{k: v for k, v in options.items() if v is not None})
    elif data is not None and not repairs:
        raise ArgumentError(f"criterion {type(criterion).__name__} uses weights only; data= is not used (it is "
                            f"with recalibrate=True or reconstruct='least_squares')")


def _own_graph(graph: ChannelGraph, model: nn.Module) -> ChannelGraph:
    """``graph`` if its traced module reads ``model``'s own layers, else a named refusal."""
    for node in graph.gm.graph.nodes:
        if node.op == "call_module":
            try:
                mine = model.get_submodule(node.target)
            except AttributeError:
                mine = None
            if mine is not graph.gm.get_submodule(node.target):
                raise ArgumentError(f"graph= was traced on another model (its layer {node.target!r} is not this "
                                    f"model's); trace this one, or check surgery.groups.rebind.structure and "
                                    f"rebind(graph, model, example_inputs)")
    return graph


_MAX_KEPT_CODE = 8  # classes kept whole before a pruned model that does not run is raised


@contextlib.contextmanager
def _said_on_success(defer: bool) -> Iterator[None]:
    """With ``defer``, the warnings of the block are shown only if it returns normally."""
    if not defer:
        yield
        return
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        yield
    for w in said:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)


class Pruner:
    """Plan and apply structured pruning under a budget, in one or several steps.

    ``plan()`` is a dry run; ``step()`` applies the next step; ``steps()`` yields the model
    after each step (fine-tune it inside the loop); ``run(on_step)`` does them all. The
    given model is untouched unless ``inplace=True``. ``graph``: a channel graph of this very
    model (``surgery.trace``, or ``surgery.groups.rebind.rebind`` of one traced on a model of
    the same structure) that the first step uses instead of tracing again.
    """

    def __init__(self, model: nn.Module, example_inputs: Any, config: PruneConfig | None = None, *,
                 data: Any = None, max_batches: int | None = None, forward_fn: Callable | None = None,
                 loss_fn: Callable | None = None, graph: ChannelGraph | None = None, **options):
        if not isinstance(model, nn.Module):
            raise ArgumentTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        PruneConfig.check_names(options)
        self.config = replace(config or PruneConfig(), **options)
        self._data = dict(data=data, max_batches=max_batches, forward_fn=forward_fn, loss_fn=loss_fn)
        self.example_inputs = example_inputs
        self.criterion = _criteria.get(self.config.criterion)
        self.budget = Budget(model, self.config)
        self._ignored = list(self.config.ignored_layers)
        self._kept_code: list = []  # classes whose channels are kept because their code broke (export, run)
        self.model = model
        self._owned = self.config.inplace  # after the first rewrite the Pruner owns its copy
        self._callers = model  # edited in place only as itself (never swapped for a GraphModule)
        self.step_index = 0
        self.plans: list = []
        self.verification: Verification | None = None  # what the last step's check covered
        self.last_step: tuple | None = None  # (channel graph, removed units) of the last step
        self._cost0: float | None = None
        self._given_graph = _own_graph(graph, model) if graph is not None else None  # for the first step
        self._traced: tuple | None = None  # (structure and input spec, graph) of the last trace

    @property
    def done(self) -> bool:
        return self.step_index >= self.config.iterative_steps

    def plan(self) -> Plan:
        """What the next step would remove (nothing changes). ``print(plan.summary())``."""
        graph = self._trace()
        return plan_from_units(graph, self._choose(graph, self.step_index + 1), self.model)

    def preview(self) -> Report:
        """A dry run's effect: per-layer channels, parameters and FLOPs before and after the
        next step, on a pruned copy (nothing changes). ``print(pruner.preview())``."""
        graph = self._trace()
        units = self._choose(graph, self.step_index + 1)
        return report(self.model, rewrite(self.model, graph, units), self.example_inputs)

    def step(self) -> nn.Module:
        """Apply the next step (scores recomputed on the current model)."""
        if self.done:
            raise RuntimeError(f"all {self.config.iterative_steps} steps are done")
        while True:
            graph = self._trace()
            units = self._choose(graph, self.step_index + 1)
            plan = plan_from_units(graph, units, self.model)
            before = copy.deepcopy(self.model) if self.config.reconstruct != "none" else None
            try:
                with _said_on_success(graph.front != "fx"):  # a plan given up says nothing
                    new, self.verification = checked_rewrite(self.model, graph, units, self.example_inputs,
                                                             inplace=self._owned, verify_exact=self.config.verify,
                                                             strict=self.config.verify_dtype == "float64",
                                                             new_object_ok=self.model is not self._callers)
                break
            except FailsToRun as err:
                self._keep_failing_code(graph, err)
        self.model, self._owned = record(new, self.model, plan, touched_layers(graph, units)), True
        object.__setattr__(self.model, KEEPS, keep_indices(graph, units))
        self.last_step = (graph, units)
        self._repair(before)
        self.plans.append(plan)
        self.step_index += 1
        return self.model

    def _keep_failing_code(self, graph: ChannelGraph, err: FailsToRun) -> None:
        """After a rewrite that does not run: keep the channels of every module of the failing
        class, so that the step is planned again without them; else raise ``err``.

        torch.export and recorded runs hold the sizes a module's own code computes at run time
        as literals (``reshape(B, N, 3, heads, C // heads)`` with ``C`` read from the input,
        timm's NesT), so a plan that the graph allows can break that code. Every module of the
        class runs the same code, so all of them keep their channels (as ``ignored_layers``
        would), with a warning. torch.fx sees those sizes: a failure there is a bug, raised."""
        owner = self._owner_code(err.module)
        if graph.front == "fx" or owner is None or len(self._kept_code) >= _MAX_KEPT_CODE:
            raise err
        cls = type(self.model.get_submodule(owner))
        names = [n for n, m in self.model.named_modules() if type(m) is cls and n not in self._ignored]
        if not names:
            raise err
        warnings.warn(f"the pruned model fails to run in {owner!r} ({cls.__name__}: {str(err.__cause__)[:200]}): "
                      f"the {graph.front} graph holds the sizes its code computes at run time as constants, so the "
                      f"channels of its {len(names)} {cls.__name__} module(s) are kept (as with ignored_layers) "
                      f"and the step is planned again", stacklevel=user_stacklevel())
        self._ignored += names
        self._kept_code.append(cls)
        self._traced = None

    def _owner_code(self, name: str) -> str | None:
        """The innermost module at or above ``name`` whose class is not torch.nn's own (the
        user's code that computed the size); None at the model itself."""
        while name:
            if not type(self.model.get_submodule(name)).__module__.startswith("torch.nn"):
                return name
            name = name.rpartition(".")[0]
        return None

    @property
    def _repairs(self) -> bool:
        return self.config.recalibrate or self.config.reconstruct != "none"

    def _repair(self, before: nn.Module | None) -> None:
        """Weight updates after the verified rewrite: least-squares refit, then norm statistics."""
        if not self._repairs:
            return
        data, batches = self._data["data"], self._data["max_batches"]
        if data is None:
            raise ArgumentError("recalibrate=True / reconstruct='least_squares' need calibration batches: pass "
                                "data=<DataLoader or list of (inputs, targets)>")
        if before is not None:
            reconstruct(before, self.model, data, max_batches=batches or 8, forward_fn=self._data["forward_fn"])
        if self.config.recalibrate:
            recalibrate(self.model, data, max_batches=batches or 16, forward_fn=self._data["forward_fn"])

    def steps(self) -> Iterator[nn.Module]:
        while not self.done:
            yield self.step()

    def run(self, on_step: Callable[[nn.Module, int], Any] | None = None) -> nn.Module:
        """All remaining steps; ``on_step(model, step)`` runs after each (fine-tuning)."""
        for model in self.steps():
            if on_step is not None:
                on_step(model, self.step_index)
        return self.model

    def _trace(self) -> ChannelGraph:
        """The channel graph of the current model: the given one on the first step, a cached one
        when the model's structure has not changed since it was traced (``plan()`` then
        ``step()``, a step that removed nothing), else a new trace."""
        if self._given_graph is not None and self.step_index == 0:
            return self._given_graph
        key = (structure(self.model), input_spec(self.example_inputs))
        if self._traced is not None and self._traced[0] == key:
            return rebind(self._traced[1], self.model, self.example_inputs)
        with warnings.catch_warnings():
            if self.step_index:  # the first trace already said what it had to say
                warnings.simplefilter("ignore")
            graph = trace(self.model, self.example_inputs, leaf_modules=self.config.leaf_modules,
                          ignored_layers=self._ignored, attention=self.config.attention,
                          tracer=self.config.tracer)
        if self._traced is not None:
            self._unlink(self._traced[1])  # stale: the model changed since
        self._traced = (key, graph)
        return graph

    def release(self) -> None:
        """Let the graphs this Pruner traced free the layers they reference as soon as they are
        dropped, not at Python's next full garbage collection (after an in-place step they hold
        the replaced weights; see :func:`surgery.capture.fx.unlinked`). The Pruner still works."""
        for graph in (self._traced[1] if self._traced else None, self.last_step[0] if self.last_step else None):
            self._unlink(graph)

    def _unlink(self, graph: ChannelGraph | None) -> None:
        if graph is not None and graph is not self._given_graph and isinstance(graph.gm, fx.GraphModule):
            unlinked(graph.gm)

    def _choose(self, graph: ChannelGraph, step: int) -> np.ndarray:
        opts = dict(self._data)
        calibrate(self.criterion, self.model, opts.pop("data"), self._repairs, **opts)  # on the current model
        self.budget.remember(graph)
        c = self.config
        if c.target is None:
            return self._select(graph, scheduled(c.schedule, step, c.iterative_steps, c.ratio), step, self._scorer())
        goal = 1.0 - scheduled(c.schedule, step, c.iterative_steps, 1.0 - c.target)
        return self._search(graph, goal, step)

    def _scorer(self) -> _criteria.Criterion:
        """The criterion as selection asks it (normalised per group for global ranking)."""
        c = self.config
        method = "mean" if c.normalize in ("flops", "latency") else c.normalize
        return _criteria.Normalized(self.criterion, method) if c.global_pruning else self.criterion

    def _select(self, graph: ChannelGraph, ratio: float, step: int, scorer: _criteria.Criterion) -> np.ndarray:
        counts = self.budget.counts(graph, ratio, step, scorer, self._unit_costs(graph))
        units = [select_units(graph, graph.groups[i], scorer, n) for i, n in counts.items()]
        units = [u for u in units if len(u)]
        return np.concatenate(units) if units else EMPTY

    def _unit_costs(self, graph: ChannelGraph) -> dict | None:
        """{group index: fraction of the FLOPs (or measured latency) one of its units saves}, for
        normalize="flops" / "latency" (computed once per traced graph)."""
        if self.config.normalize not in ("flops", "latency") or not self.config.global_pruning:
            return None
        if getattr(self, "_costs_for", None) is not graph:
            cost = CostModel(self.model, graph, self.example_inputs, self.config.normalize)
            self._costs, self._costs_for = {g.index: cost.unit_saving(g.units) for g in graph.prunable_groups}, graph
        return self._costs

    def _search(self, graph: ChannelGraph, goal: float, step: int) -> np.ndarray:
        """Bisection on the ratio with the analytic cost model (no rewrite per probe), then one
        real measurement of the chosen model; if it misses ``goal`` by more than 0.5%, the
        analytic target is shifted by the miss and the search repeated (at most 3 times)."""
        kind = "params" if self.config.target_params is not None else "flops"
        cost = CostModel(self.model, graph, self.example_inputs, kind)
        if self._cost0 is None:
            self._cost0 = cost.total  # the same count as _cost on the model before the first step
        scale = cost.total / self._cost0  # this step's model against the original
        aim, best = goal, None
        scorer = Remembered(self._scorer())  # each group scored once for all probes
        for _ in range(4):
            units = self._bisect(graph, cost, aim / scale, step, scorer)
            kept = self._cost(rewrite(self.model, graph, units)) / self._cost0
            if best is None or abs(kept - goal) < abs(best[0] - goal):
                best = (kept, units)
            if abs(kept - goal) <= 0.005:
                break
            aim += goal - kept
        if abs(best[0] - goal) > 0.02:
            warnings.warn(f"could only reach {best[0]:.1%} of the original cost (target {goal:.1%}); "
                          f"frozen groups, max_ratio or min_channels limit pruning", stacklevel=user_stacklevel())
        return best[1]

    def _bisect(self, graph: ChannelGraph, cost: CostModel, goal: float, step: int,
                scorer: _criteria.Criterion) -> np.ndarray:
        lo, hi, best = 0.0, 0.999, None
        for _ in range(30):
            mid = (lo + hi) / 2
            units = self._select(graph, mid, step, scorer)
            kept = cost.kept(units)
            if best is None or abs(kept - goal) < abs(best[0] - goal):
                best = (kept, units)
            if abs(kept - goal) <= 0.001:
                break
            lo, hi = (mid, hi) if kept > goal else (lo, mid)
        return best[1]

    def _cost(self, model: nn.Module) -> float:
        if self.config.target_params is not None:
            return float(count_params(model))
        return float(count_flops(model, self.example_inputs))
