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

import numpy as np
import torch.nn as nn

from surgery.core.errors import ArgumentError
from surgery.core.indices import channel_indices
from surgery.repair.recalibrate import TOUCHED
from surgery.groups.graph import ChannelGraph
from surgery.select.selection import units_for_positions

__all__ = ["Plan", "PlanEntry", "plan_from_units", "units_from_plan", "fingerprint", "check_architecture", "HISTORY", "TOUCHED", "history", "record", "touched_layers"]

FORMAT, VERSION = "torch-surgery-plan", 1


@dataclass
class PlanEntry:
    layer: str
    dim: str
    size: int
    indices: list


def _entry(e: dict) -> PlanEntry:
    """One checked plan entry: a layer name, a whole size and valid indices (the same validator
    as ``Surgeon.remove_channels``)."""
    size = e["size"]
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ArgumentError(f"plan entry for {e.get('layer')!r}: size must be a positive integer, got {size!r}")
    where = f"plan indices of '{e['layer']}' ({e.get('dim', 'out')})"
    return PlanEntry(str(e["layer"]), str(e.get("dim", "out")), size,
                     channel_indices(e["indices"], size, where).tolist())


@dataclass
class Plan:
    """What a pruning step removes: per group, an anchor layer dimension and its lost indices.
    ``summary()`` returns a table; ``surgery.apply_plan`` replays it on a fresh model."""
    entries: list = field(default_factory=list)
    inputs: list = field(default_factory=list)
    model: str = ""
    architecture: dict = field(default_factory=dict)
    trace: dict = field(default_factory=dict)  # how the graph was traced: {"attention": ..., "tracer": ...}

    @property
    def removed_channels(self) -> int:
        return sum(len(e.indices) for e in self.entries)

    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "model": self.model, "architecture": self.architecture,
                "inputs": self.inputs, "trace": self.trace, "remove": [vars(e) for e in self.entries]}

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: dict) -> "Plan":
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ArgumentError(f"not a torch-surgery plan: expected a JSON object with \"format\": \"{FORMAT}\"")
        if data.get("version") != VERSION:
            raise ArgumentError(f"plan version {data.get('version')} is not supported (this library reads {VERSION})")
        try:
            entries = [_entry(e) for e in data["remove"]]
        except (KeyError, TypeError) as err:
            raise ArgumentError(f"malformed plan entry ({err}); each needs layer, size and indices") from None
        return cls(entries, list(data.get("inputs", [])), str(data.get("model", "")),
                   dict(data.get("architecture") or {}),
                   {k: v for k, v in (data.get("trace") or {}).items() if k in ("attention", "tracer")})

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        return cls.from_dict(json.loads(text))

    def summary(self) -> str:
        """One row per pruned group: anchor layer, dimension, channels before, removed, kept."""
        head = f"{'layer':<40} {'dim':>4} {'before':>7} {'removed':>8} {'kept':>6}"
        rows = [head, "-" * len(head)]
        for e in self.entries:
            name = e.layer if len(e.layer) <= 40 else "..." + e.layer[-37:]
            rows.append(f"{name:<40} {e.dim:>4} {e.size:>7} {len(e.indices):>8} {e.size - len(e.indices):>6}")
        rows.append(f"{len(self.entries)} groups pruned, {self.removed_channels} channels removed "
                    f"(coupled layers lose the same channels)")
        return "\n".join(rows)


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
        raise ArgumentError(
            f"this plan does not fit the model: it was made for {want.get('class')} with "
            f"{want.get('params', 0):,} parameters, this is {mine['class']} with {mine['params']:,} "
            f"(layer names or shapes differ). Apply it to a fresh instance of the architecture it was "
            f"made for (after the same earlier plans, if any).")


def plan_from_units(graph: ChannelGraph, removed: np.ndarray, model: nn.Module | None = None) -> Plan:
    """Describe removed units as one entry per touched group."""
    gone = graph.removed_mask(removed)
    entries = []
    for g in graph.groups:
        hit = np.flatnonzero(gone[g.units])
        if not len(hit):
            continue
        m = g.anchor
        positions = np.nonzero(np.isin(m.unit_index, hit))[0].tolist()
        entries.append(PlanEntry(m.name, m.role, len(m.unit_index), positions))
    arch = fingerprint(model) if model is not None else {}
    how = {"attention": graph.attention, "tracer": graph.front}
    return Plan(entries, list(graph.input_spec), arch.get("class", ""), arch, how)


def touched_layers(graph: ChannelGraph, removed: np.ndarray) -> list:
    """Names of the layers (not raw parameters) that removing ``removed`` rebuilds."""
    gone = graph.removed_mask(removed)
    return sorted({m.name for g in graph.groups if gone[g.units].any() for m in g.members if m.kind != "param"})


def units_from_plan(graph: ChannelGraph, plan: Plan) -> np.ndarray:
    """The units a plan removes on this graph; checks sizes, coupling and frozen groups."""
    members = {(m.name, m.role): (g, m) for g in graph.groups for m in g.members}
    chosen: dict = {}
    for e in plan.entries:
        if (e.layer, e.dim) not in members:
            raise ArgumentError(_mismatch(plan, f"has no prunable dimension '{e.dim}' of layer '{e.layer}'"))
        group, m = members[(e.layer, e.dim)]
        if len(m.unit_index) != e.size:
            raise ArgumentError(_mismatch(plan, f"'{e.layer}' has {len(m.unit_index)} channels ({e.dim}), "
                                             f"the plan expects {e.size}"))
        chosen.setdefault(group.index, []).append((e, _units_of(group, m, e)))
    units = []
    for gi, picks in chosen.items():
        group = graph.groups[gi]
        first = picks[0][1]
        for e, u in picks[1:]:
            if not np.array_equal(u, first):
                raise ArgumentError(f"plan entries for coupled layers '{picks[0][0].layer}' and '{e.layer}' "
                                 f"remove different channels of the same group")
        if not group.prunable:
            raise ArgumentError(f"the plan removes channels of '{picks[0][0].layer}', which are frozen here: {group.reason}")
        if len(first) >= group.size:
            raise ArgumentError(f"the plan removes every channel of '{picks[0][0].layer}'s group")
        units.append(group.units[first])
    return np.concatenate(units) if units else np.zeros(0, dtype=np.int64)


def _units_of(group, member, entry: PlanEntry) -> np.ndarray:
    idx = channel_indices(entry.indices, entry.size, f"plan indices of '{entry.layer}' ({entry.dim})")
    return units_for_positions(group, member, idx, f"plan entry for '{entry.layer}'")


def _mismatch(plan: Plan, what: str) -> str:
    made = f" (made for {plan.model})" if plan.model else ""
    return f"this plan does not fit the model{made}: the model {what}. Apply it to the architecture it was made for."


# --------------------------------------------------------------------------- history on the model
HISTORY = "surgery_history"
_NAME = "_surgery_model_name"


def history(model: nn.Module) -> list:
    """The JSON plans that produced ``model``, oldest first (empty for an unpruned model)."""
    return list(getattr(model, HISTORY, []))


def record(result: nn.Module, source: nn.Module, plan: Plan, touched: list | tuple = ()) -> nn.Module:
    """Give ``result`` the history of ``source`` plus ``plan`` (when it removed anything), and
    the names of the layers its rewrites rebuilt (``touched``, added to the source's)."""
    past = history(source)
    if plan.entries:
        past.append(plan.to_json(indent=None))
    object.__setattr__(result, HISTORY, past)
    before = list(getattr(source, TOUCHED, []))
    object.__setattr__(result, TOUCHED, before + [n for n in touched if n not in before])
    object.__setattr__(result, _NAME, plan.model or fingerprint(source)["class"])
    return result
