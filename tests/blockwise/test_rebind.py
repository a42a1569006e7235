"""Reusing a channel graph on another model of the same structure, and refusing a graph
traced on another model."""
import pytest
import torch
import torch.nn as nn

import surgery
from surgery.core.errors import ArgumentError
from surgery.groups.rebind import rebind, structure


class Block(nn.Module):
    def __init__(self, index, width=8):
        super().__init__()
        self.layer_idx = index
        self.up, self.down = nn.Linear(4, width), nn.Linear(width, 4)

    def forward(self, x):
        return x + self.down(torch.relu(self.up(x)))


def test_structure_sees_shapes_and_plain_attributes_but_not_ignored_ones():
    a, b = Block(0), Block(1)
    assert structure(a) != structure(b)  # layer_idx differs
    assert structure(a, ignore={"layer_idx"}) == structure(b, ignore={"layer_idx"})
    assert structure(a, ignore={"layer_idx"}) != structure(Block(1, width=6), ignore={"layer_idx"})


def test_a_rebound_graph_prunes_the_other_model_exactly():
    torch.manual_seed(0)
    a, b = Block(0).double(), Block(1).double()
    x = torch.randn(3, 4, dtype=torch.float64)
    graph = surgery.trace(a, x)
    pruner = surgery.Pruner(b, x, ratio=0.5, graph=rebind(graph, b, x))
    small = pruner.step()
    assert small.up.out_features == 4 and pruner.verification.exact
    assert pruner.last_step[0].gm.get_submodule("up") is b.up


def test_a_graph_of_another_model_is_refused():
    x = torch.randn(3, 4)
    graph = surgery.trace(Block(0), x)
    with pytest.raises(ArgumentError, match="traced on another model"):
        surgery.Pruner(Block(1), x, ratio=0.5, graph=graph)


def test_plan_then_step_traces_once_and_a_changed_model_is_traced_again(monkeypatch):
    import surgery.pruner as pruner_module
    calls = []
    real = pruner_module.trace
    monkeypatch.setattr(pruner_module, "trace", lambda *a, **k: calls.append(1) or real(*a, **k))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)).double()
    x = torch.randn(3, 4, dtype=torch.float64)
    pruner = surgery.Pruner(model, x, ratio=0.5, iterative_steps=2)
    pruner.plan()
    small = pruner.step()
    assert len(calls) == 1 and pruner.verification.exact
    pruner.step()  # the model changed: traced again
    assert len(calls) == 2 and small[0].out_features < 8
