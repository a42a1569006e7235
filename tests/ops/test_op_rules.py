"""Exactness of every op rule on a small hand-written model."""
import pytest
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

import surgery
from support.oracle import prune_exact, prepared, prune_quiet
from support.op_models import IMAGE_MODELS, Embed, LayerNormMLP, LiteralReshape
from surgery.metrics import count_params


@pytest.mark.parametrize("cls", IMAGE_MODELS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("ratio", [0.3, 0.5])
def test_op_model_is_exact(cls, ratio, x32):
    torch.manual_seed(0)
    prune_exact(prepared(cls()), x32, ratio=ratio)


def test_embedding_is_exact():
    tokens = torch.randint(0, 20, (3, 7), generator=torch.Generator().manual_seed(0))
    prune_exact(prepared(Embed()), tokens)


def test_layernorm_model_prunes_with_same_output_shape():
    m = prepared(LayerNormMLP())
    x = torch.randn(4, 8, dtype=torch.float64)
    p = prune_quiet(m, x, ratio=0.5)
    assert p.ln.normalized_shape == (8,) and p.fc1.out_features == 8 and p.fc2.in_features == 8
    assert p(x).shape == m(x).shape


def test_literal_reshape_returns_patched_graph_module(x32):
    class HardCoded(LiteralReshape):  # the size is written in the code: only a patched graph can change it
        def forward(self, x):
            y = self.conv(x)
            return self.fc(y.reshape(y.shape[0], 10, -1).mean(2))

    m = prepared(HardCoded())
    with pytest.warns(UserWarning, match="GraphModule"):
        p = surgery.prune(m, x32, ratio=0.5)
    assert isinstance(p, fx.GraphModule)
    assert p.get_submodule("conv.0").out_channels == 5
    assert count_params(p) < count_params(m)


def test_a_reshape_by_a_size_attribute_keeps_the_class(x32):
    m = prepared(LiteralReshape())  # reshape(n, self.hidden, -1): the attribute follows the width
    p = surgery.prune(m, x32, ratio=0.5)
    assert type(p) is LiteralReshape and p.hidden == p.conv[0].out_channels == 5 and m.hidden == 10


def test_shuffle_groups_are_unified_across_halves(x32):
    from support.op_models import Shuffle
    g = surgery.trace(prepared(Shuffle()), x32)
    stream = [grp for grp in g.groups if any(mb.name == "stem.0" for mb in grp.producers)][0]
    # each chunk+shuffle pairs positions across halves; two in a row leave units of 4 stem channels
    stem = [mb for mb in stream.members if mb.name == "stem.0"][0]
    assert stream.prunable and stream.size == 4
    assert all(len(stem.positions(u)) == 4 for u in range(4))


class _PooledBranch(torch.nn.Module):
    """ASPPPooling's pattern: pool, conv, then upsample back to the input's H and W, read
    with ``x.shape[-2:]`` (or ``x.shape[1]`` to show that a channel read still freezes)."""

    def __init__(self, read_channels=False):
        super().__init__()
        self.read_channels = read_channels
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.pool_conv = torch.nn.Conv2d(8, 8, 1)
        self.head = torch.nn.Conv2d(16, 4, 1)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        size = x.shape[-2:]
        pooled = self.pool_conv(torch.nn.functional.adaptive_avg_pool2d(x, 1))
        pooled = torch.nn.functional.interpolate(pooled, size=size, mode="bilinear", align_corners=False)
        if self.read_channels:
            pooled = pooled / x.shape[1]
        return self.head(torch.cat([x, pooled], 1))


def test_reading_height_and_width_leaves_channels_prunable_and_reading_channels_does_not():
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    small = prune_exact(_PooledBranch().double(), x)
    assert small.conv.out_channels == 4 and small.pool_conv.out_channels == 4
    g = surgery.trace(_PooledBranch(read_channels=True).double(), x)
    frozen = [grp for grp in g.groups if grp.size == 8 and not grp.prunable]
    assert frozen and "used as a value" in frozen[0].reason


class StandardizedConv(nn.Conv2d):
    """Weight standardisation as timm's ScaledStdConv2d does it: each output row normalised
    over its fan-in by F.batch_norm with batch statistics."""
    def forward(self, x):
        w = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None, training=True,
                         momentum=0.0, eps=1e-5).reshape_as(self.weight)
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


@pytest.mark.parametrize("kernel", [1, 3])
def test_weight_standardisation_prunes_as_a_normalisation_over_channels(x32, kernel):
    """The fan-in (input channels x kernel) is the standardised dim: pruning through it is not
    exact. Kernel dims are not channels (the conv handler never slices them), so a 3x3 kernel
    merged with the input channels by ``reshape(1, out, -1)`` does not freeze them."""
    m = prepared(nn.Sequential(StandardizedConv(3, 10, 3, padding=1), nn.ReLU(),
                               StandardizedConv(10, 10, kernel, padding=kernel // 2),
                               nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(10, 5)))
    with pytest.warns(UserWarning, match="batch statistics"):
        p = surgery.prune(m, x32, ratio=0.5)
    assert p[0].out_channels == p[2].in_channels == p[2].weight.shape[1] == 5
    assert p[2].weight.shape[2:] == (kernel, kernel)
    assert not p.surgery_verification.exact and p(x32).shape == m(x32).shape


class FunctionalConv(nn.Conv2d):
    """A Conv2d subclass whose forward calls F.conv2d with its own groups (timm's ScaledStdConv2d
    does, grouped in NF-RegNet)."""
    def forward(self, x):
        return F.conv2d(x, self.weight * 1.0, self.bias, self.stride, self.padding, self.dilation, self.groups)


def test_functional_depthwise_and_grouped_convs_prune_exactly_and_keep_the_class():
    """Depthwise (two rows per input channel): the rows follow their input channel and the groups
    literal, read from self.groups, follows the kept count; grouped: the same positions go in
    every group and groups stays."""
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    m = prepared(nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), FunctionalConv(8, 16, 3, padding=1, groups=8),
                               nn.ReLU(), FunctionalConv(16, 16, 3, padding=1, groups=4), nn.ReLU(),
                               nn.Conv2d(16, 6, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5)))
    p = prune_exact(m, x)
    assert type(p) is nn.Sequential
    assert p[0].out_channels == 4 and p[2].weight.shape == (8, 1, 3, 3) and p[2].groups == 4
    assert p[4].weight.shape == (8, 2, 3, 3) and p[4].groups == 4


def test_a_functional_depthwise_conv_through_torch_export_rebuilds_its_layer():
    """On the export front the user's forward runs as written: the depthwise layer itself is
    rebuilt by its handler, so ``self.groups`` follows the kept channels."""
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    m = prepared(nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), FunctionalConv(8, 8, 3, padding=1, groups=8),
                               nn.ReLU(), nn.Conv2d(8, 6, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5)))
    p = prune_exact(m, x, tracer="export")
    assert p[2].groups == p[2].in_channels == p[2].out_channels == p[2].weight.shape[0] == 4


class FunctionalGroupNorm(nn.GroupNorm):
    """timm's GroupNormAct: F.group_norm with the layer's own num_groups."""
    def forward(self, x):
        return F.relu(F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps))


class FunctionalBatchNorm(nn.BatchNorm2d):
    """timm's BatchNormAct2d: F.batch_norm with the layer's own statistics (aten.batch_norm when
    exported)."""
    def forward(self, x):
        return F.relu(F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0,
                                   self.eps))


@pytest.mark.parametrize("tracer", ["fx", "export"])
def test_functional_group_norm_and_batch_norm_prune_whole_groups_exactly(tracer):
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    m = prepared(nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), FunctionalGroupNorm(4, 16), nn.Conv2d(16, 8, 1),
                               FunctionalBatchNorm(8), nn.Conv2d(8, 6, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                               nn.Linear(6, 5)))
    p = prune_exact(m, x, tracer=tracer)
    assert type(p) is nn.Sequential
    assert p[0].out_channels == p[1].weight.shape[0] == 8 and p[1].num_groups == 2  # two whole groups of four
    assert p[2].out_channels == p[3].running_mean.shape[0] == 4


class RotatedKernelConv(nn.Conv2d):
    """A weight made by an op with no channel rule: its rows, and so its bias, cannot be sliced."""
    def forward(self, x):
        return F.conv2d(x, torch.rot90(self.weight, 1, (2, 3)), self.bias, self.stride, self.padding)


def test_the_bias_of_a_weight_no_rule_can_slice_stays_whole(x32):
    m = prepared(nn.Sequential(nn.Conv2d(3, 10, 3, padding=1), nn.ReLU(), RotatedKernelConv(10, 10, 3, padding=1),
                               nn.ReLU(), nn.Conv2d(10, 8, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                               nn.Linear(8, 5)))
    p = prune_exact(m, x32)
    assert p[2].bias.shape == (10,) and p[4].out_channels == 4


def test_a_layer_subclass_keeps_the_attributes_its_handler_set(x32):
    m = prepared(nn.Sequential(nn.Conv2d(3, 10, 3, padding=1), nn.ReLU(), StandardizedConv(10, 10, 3, padding=1),
                               nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(10, 5)))
    p = prune_quiet(m, x32, ratio=0.5, ignored_layers=[m[0]])  # the literal out_channels (10 -> 5) in its
    # forward is not in_channels (10, kept whole by ignoring the layer before)
    assert p[2].in_channels == p[2].weight.shape[1] == 10 and p[2].out_channels == p[2].weight.shape[0] == 5
