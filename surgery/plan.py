"""Plans: which channels each group loses, as reviewable, replayable JSON.

A plan lists, per pruned group, one anchor layer dimension and the indices it loses;
everything coupled to those channels follows when the plan is applied. It also records
the example-input shapes (to trace a fresh model) and the sizes it expects, so a plan
made for another architecture fails with a clear message.

JSON shape (another tool can emit the same)::

    {"format": "torch-surgery-plan", "version": 1, "model": "ResNet",
     "inputs": [{"shape": [1, 3, 32, 32], "dtype": "float32"}],
     "remove": [{"layer": "conv1", "dim": "out", "size": 64, "indices": [3, 17]}]}
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from surgery.groups import ChannelGraph

__all__ = ["Plan", "PlanEntry", "plan_from_units", "units_from_plan", "apply", "input_spec", "spec_inputs"]

FORMAT, VERSION = "torch-surgery-plan", 1


@dataclass
class PlanEntry:
    layer: str
    dim: str
    size: int
    indices: list


@dataclass
class Plan:
    """What a pruning step removes. ``summary()`` (on a plan made by the engine) prints a table."""
    entries: list = field(default_factory=list)
    inputs: list = field(default_factory=list)
    model: str = ""
    architecture: dict = field(default_factory=dict)
    _context: Any = field(default=None, repr=False, compare=False)  # (model, graph) for summaries

    @property
    def removed_channels(self) -> int:
        return sum(len(e.indices) for e in self.entries)

    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "model": self.model, "architecture": self.architecture,
                "inputs": self.inputs, "remove": [vars(e) for e in self.entries]}

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: dict) -> "Plan":
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"not a torch-surgery plan: expected a JSON object with \"format\": \"{FORMAT}\"")
        if data.get("version") != VERSION:
            raise ValueError(f"plan version {data.get('version')} is not supported (this library reads {VERSION})")
        try:
            entries = [PlanEntry(str(e["layer"]), str(e.get("dim", "out")), int(e["size"]),
                                 sorted(int(i) for i in e["indices"])) for e in data["remove"]]
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"malformed plan entry ({err}); each needs layer, size and indices") from None
        return cls(entries, list(data.get("inputs", [])), str(data.get("model", "")),
                   dict(data.get("architecture") or {}))

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        return cls.from_dict(json.loads(text))

    def summary(self) -> str:
        """Per-layer channels, parameters and FLOPs before/after (a dry run; nothing changes)."""
        if self._context is None:
            raise ValueError("this plan was loaded from JSON; apply it to a model and use surgery.report")
        from surgery.report import report
        from surgery.rewrite import rewrite
        model, graph, inputs = self._context
        pruned = rewrite(model, graph, units_from_plan(graph, self))
        return report(model, pruned, inputs).table()


def input_spec(example_inputs: Any) -> list:
    from surgery.tracing import as_inputs
    args, kwargs = as_inputs(example_inputs)
    if kwargs:
        return [{"name": k, "shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")}
                for k, v in kwargs.items()]
    return [{"shape": list(a.shape), "dtype": str(a.dtype).replace("torch.", "")} for a in args]


def spec_inputs(spec: list, device: torch.device | None = None) -> Any:
    """Example inputs (zeros, or zeros of an integer dtype) rebuilt from a plan's ``inputs``."""
    if not spec:
        raise ValueError("the plan records no example inputs; pass example_inputs=... to apply it")
    tensors = [torch.zeros(s["shape"], dtype=getattr(torch, s["dtype"]), device=device) for s in spec]
    if "name" in spec[0]:
        return {s["name"]: t for s, t in zip(spec, tensors)}
    return tuple(tensors)


def fingerprint(model: nn.Module) -> dict:
    """Class, parameter count and a digest of every state_dict name and shape."""
    items = sorted(f"{k}:{tuple(v.shape)}" for k, v in model.state_dict().items())
    digest = hashlib.sha1("\n".join(items).encode()).hexdigest()[:16]
    params = sum(p.numel() for p in model.parameters())
    return {"class": getattr(model, "_surgery_model_name", type(model).__name__), "params": params, "digest": digest}


def check_architecture(plan: Plan, model: nn.Module) -> None:
    if not plan.architecture:
        return  # plans from other tools may omit it; sizes are still checked entry by entry
    mine = fingerprint(model)
    if mine["digest"] != plan.architecture.get("digest"):
        want = plan.architecture
        raise ValueError(
            f"this plan does not fit the model: it was made for {want.get('class')} with "
            f"{want.get('params', 0):,} parameters, this is {mine['class']} with {mine['params']:,} "
            f"(layer names or shapes differ). Apply it to a fresh instance of the architecture it was "
            f"made for (after the same earlier plans, if any).")


def _anchor(group):
    members = group.producers or group.members
    return members[0]


def plan_from_units(graph: ChannelGraph, removed: np.ndarray, model: nn.Module | None = None) -> Plan:
    """Describe removed units as one entry per touched group."""
    removed_set = set(np.asarray(removed).tolist())
    entries = []
    for g in graph.groups:
        hit = [i for i, u in enumerate(g.units.tolist()) if u in removed_set]
        if not hit:
            continue
        m = _anchor(g)
        positions = np.nonzero(np.isin(m.unit_index, hit))[0].tolist()
        entries.append(PlanEntry(m.name, m.role, len(m.unit_index), positions))
    arch = fingerprint(model) if model is not None else {}
    return Plan(entries, list(getattr(graph, "input_spec", [])), arch.get("class", ""), arch)


def units_from_plan(graph: ChannelGraph, plan: Plan) -> np.ndarray:
    """The units a plan removes on this graph; checks sizes, coupling and frozen groups."""
    members = {(m.name, m.role): (g, m) for g in graph.groups for m in g.members}
    chosen: dict = {}
    for e in plan.entries:
        if (e.layer, e.dim) not in members:
            raise ValueError(_mismatch(plan, f"has no prunable dimension '{e.dim}' of layer '{e.layer}'"))
        group, m = members[(e.layer, e.dim)]
        if len(m.unit_index) != e.size:
            raise ValueError(_mismatch(plan, f"'{e.layer}' has {len(m.unit_index)} channels ({e.dim}), "
                                             f"the plan expects {e.size}"))
        chosen.setdefault(group.index, []).append((e, _units_of(group, m, e)))
    units = []
    for gi, picks in chosen.items():
        group = graph.groups[gi]
        first = picks[0][1]
        for e, u in picks[1:]:
            if not np.array_equal(u, first):
                raise ValueError(f"plan entries for coupled layers '{picks[0][0].layer}' and '{e.layer}' "
                                 f"remove different channels of the same group")
        if not group.prunable:
            raise ValueError(f"the plan removes channels of '{picks[0][0].layer}', which are frozen here: {group.reason}")
        if len(first) >= group.size:
            raise ValueError(f"the plan removes every channel of '{picks[0][0].layer}'s group")
        units.append(group.units[first])
    return np.concatenate(units) if units else np.zeros(0, dtype=np.int64)


def _units_of(group, member, entry: PlanEntry) -> np.ndarray:
    idx = np.asarray(entry.indices, dtype=np.int64)
    if len(idx) and (idx.min() < 0 or idx.max() >= entry.size):
        raise ValueError(f"plan indices for '{entry.layer}' must be in [0, {entry.size})")
    hit = np.unique(member.unit_index[idx])
    if (hit < 0).any():
        raise ValueError(f"plan indices for '{entry.layer}' span several groups; list each group's layer")
    covered = np.nonzero(np.isin(member.unit_index, hit))[0]
    if len(covered) != len(idx):
        raise ValueError(f"plan indices for '{entry.layer}' split coupled channels "
                         f"(they must include all of {covered.tolist()[:16]} ...)")
    return hit


def _mismatch(plan: Plan, what: str) -> str:
    made = f" (made for {plan.model})" if plan.model else ""
    return f"this plan does not fit the model{made}: the model {what}. Apply it to the architecture it was made for."


def apply(model: nn.Module, plan: Plan | dict | str, *, example_inputs: Any = None, inplace: bool = False) -> nn.Module:
    """Replay ``plan`` on ``model`` (a fresh instance of the same architecture).

    Example:
        >>> import torch, surgery
        >>> from models import create
        >>> x = torch.randn(1, 3, 32, 32)
        >>> pruned = surgery.prune(create("resnet20"), x, ratio=0.5)
        >>> plan = surgery.Plan.from_json(pruned.surgery_history[-1])
        >>> again = surgery.apply(create("resnet20"), plan)
        >>> again.conv1.out_channels
        8
    """
    from surgery.rewrite import rewrite
    from surgery.trace import trace
    if isinstance(plan, str):
        plan = Plan.from_json(plan)
    elif isinstance(plan, dict):
        plan = Plan.from_dict(plan)
    check_architecture(plan, model)
    inputs = example_inputs if example_inputs is not None else spec_inputs(plan.inputs, _device(model))
    graph = trace(model, inputs)
    return rewrite(model, graph, units_from_plan(graph, plan), inplace=inplace)


def _device(model: nn.Module):
    p = next(model.parameters(), None)
    return p.device if p is not None else None
