"""surgery.trace: groups, their description, leaves and untraceable models."""
import pytest
import torch
import torch.nn as nn

import surgery
from models import create


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow
            return self.conv(x)
        return self.conv(-x)


class Wrapper(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 3, 1)
        self.block = DataDependent()
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.head(self.block(self.stem(x)))


def test_resnet20_groups_have_members_with_index_maps(x32):
    g = surgery.trace(create("resnet20").double(), x32)
    stream = g.groups[0]
    assert stream.prunable and stream.size == 16
    names = {m.name for m in stream.producers}
    assert {"conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2"} <= names
    consumer = [m for m in stream.consumers if m.name == "layer1.0.conv1"][0]
    assert [consumer.positions(u).tolist() for u in range(3)] == [[0], [1], [2]]
    assert "producer" in str(stream) and "layer1.0.bn1" not in str(stream)


def test_flatten_maps_each_channel_to_hw_features():
    m = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 5 * 5, 2))
    g = surgery.trace(m, torch.randn(1, 3, 5, 5))
    fc = [mb for mb in g.groups[0].members if mb.name == "2"][0]
    assert fc.positions(1).tolist() == list(range(25, 50))


def test_summary_returns_a_table(x32):
    out = surgery.trace(create("resnet20").double(), x32).summary()
    assert "prunable" in out and "why: reaches the model output" in out


def test_untraceable_model_names_module_line_and_fix():
    with pytest.raises(surgery.TraceError) as info:
        surgery.trace(Wrapper(), torch.randn(1, 3, 8, 8), tracer="fx")
    msg = str(info.value)
    assert "'block' (DataDependent)" in msg
    assert "test_trace.py" in msg and "if x.sum() > 0" in msg
    assert "leaf_modules=[DataDependent]" in msg


def test_leaf_module_freezes_what_it_touches():
    with pytest.warns(UserWarning, match="no channel rule for module type DataDependent"):
        g = surgery.trace(Wrapper(), torch.randn(1, 3, 8, 8), leaf_modules=[DataDependent])
    assert all(not grp.prunable for grp in g.groups if any(m.name == "stem" for m in grp.members))


def test_unknown_function_freezes_with_a_warning():
    def channel_flip(x):
        return torch.flip(x, dims=[1])

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 6, 1), nn.Conv2d(6, 2, 1)

        def forward(self, x):
            return self.b(channel_flip(self.a(x)))

    with pytest.warns(UserWarning, match="no channel rule for function torch.flip"):
        g = surgery.trace(M(), torch.randn(1, 3, 4, 4))
    assert not g.groups_of("a")[0].prunable
    assert "no channel rule" in g.groups_of("a")[0].reason


def test_model_input_added_to_conv_output_is_frozen():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 3, 1), nn.Conv2d(3, 4, 1)

        def forward(self, x):
            return self.b(self.a(x) + x)

    g = surgery.trace(M(), torch.randn(1, 3, 4, 4))
    assert "untracked" in g.groups_of("a")[0].reason or "not tracked" in g.groups_of("a")[0].reason


class Positions(nn.Module):
    """Adds a projection of positions computed in forward, reading the projection's dtype from
    its weight (timm's XCiT and EdgeNeXt do this)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.proj = nn.Conv2d(6, 8, 1)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        h, w = x.shape[-2:]
        grid = torch.arange(h * w, dtype=torch.float32).reshape(1, 1, h, w)
        pos = torch.cat([grid.sin(), grid.cos(), grid * 0.1, grid.sqrt(), grid.tanh(), grid * 0.01], 1)
        return self.head(self.stem(x) + self.proj(pos.to(self.proj.weight.dtype)))


def test_a_weight_read_directly_keeps_the_side_its_layer_does_not_track():
    from support.oracle import prepared, prune_exact
    model = prepared(Positions())
    graph = surgery.trace(model, torch.randn(1, 3, 8, 8, dtype=torch.float64))
    side = next(g for g in graph.groups if {(m.name, m.role) for m in g.members} == {("proj.weight", "dim1")})
    assert not side.prunable and "input side of 'proj'" in side.reason
    small = prune_exact(model, torch.randn(2, 3, 8, 8, dtype=torch.float64))
    assert small.proj.in_channels == 6 and small.proj.out_channels < 8


class OutlookLike(nn.Module):
    """Reshapes one tensor with a size computed from another's channel count (VOLO's
    ``v.reshape(B, heads, C // heads, ...)`` with ``C`` read from the block input)."""

    def __init__(self, dim=12, heads=3):
        super().__init__()
        self.heads = heads
        self.inp, self.v, self.proj = nn.Linear(4, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 16), nn.ReLU(), nn.Linear(16, dim))
        self.head = nn.Linear(dim, 2)

    def forward(self, x):
        x = self.inp(x)
        B, N, C = x.shape
        v = self.v(x).transpose(1, 2).reshape(B, self.heads, C // self.heads, N)
        y = v.softmax(-1).reshape(B, C, N).transpose(1, 2)
        x = x + self.proj(y)
        return self.head(x + self.mlp(x))


def test_a_size_computed_from_another_tensor_freezes_both_and_stays_exact():
    from support.oracle import prepared, prune_exact
    model = prepared(OutlookLike())
    x = torch.randn(2, 5, 4, dtype=torch.float64)
    graph = surgery.trace(model, x)
    v_out = next(g for g in graph.groups if ("v", "out") in {(m.name, m.role) for m in g.members})
    assert not v_out.prunable
    small = prune_exact(model, x)
    assert small.mlp[0].out_features < 16 and small.v.out_features == 12
