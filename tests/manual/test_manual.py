"""Surgeon (in-place, coupled), low-level remove_* functions and mask sparsity."""
import copy
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torchvision

import surgery
from support.oracle import prepared
from surgery import testing as oracle

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
GEN = torch.Generator().manual_seed(0)


def test_example_manual_flow_and_surgeon_agree():
    import layer_by_layer_vgg
    assert layer_by_layer_vgg.main()


def test_criteria_standalone_example():
    import criteria_standalone
    picks = criteria_standalone.main()
    assert all(len(v) == 32 for v in picks.values())


CALLS = {
    "resnet18": [("layer1.0.conv1", 0.5), ("layer1.0.conv2", 0.25), ("layer3.1.conv1", 0.5)],
    "mobilenet_v2": [("features.2.conv.0.0", 0.5), ("features.3.conv.2", 0.25), ("features.17.conv.1.0", 0.3)],
    "densenet121": [("features.conv0", 0.25), ("features.denseblock1.denselayer2.conv1", 0.5),
                    ("features.denseblock2.denselayer1.conv2", 0.5)],
}


@pytest.mark.parametrize("name", list(CALLS))
def test_oracle_holds_after_each_surgeon_call(name):
    original = prepared(torchvision.models.get_model(name, weights=None))
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64, generator=GEN)
    model = copy.deepcopy(original)
    s = surgery.Surgeon(model, x)
    for layer, ratio in CALLS[name]:
        before = s.model.get_submodule(layer).weight.shape[0]
        s.prune_layer(layer, ratio)
        assert s.model.get_submodule(layer).weight.shape[0] < before
        assert oracle.max_error(original, s.model, x) < 1e-10
    assert s.model is model  # edited in place


def test_remove_channels_follows_the_residual_stream():
    model = prepared(torchvision.models.resnet18(weights=None))
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64, generator=GEN)
    original = copy.deepcopy(model)
    s = surgery.Surgeon(model, x)
    group = s.group_of(model.layer1[0].conv2)
    assert {"conv1", "layer1.1.conv2", "layer2.0.conv1"} <= {m.name for m in group.members}
    s.remove_channels(model.layer1[0].conv2, [0, 5, 63])
    assert model.conv1.out_channels == 61 and model.layer1[1].bn2.num_features == 61
    assert model.layer2[0].downsample[0].in_channels == 61
    assert oracle.max_error(original, model, x) < 1e-10


def test_frozen_layer_raises_and_leaves_the_model_unchanged():
    model = torchvision.models.resnet18(weights=None)
    x = torch.randn(1, 3, 64, 64)
    s = surgery.Surgeon(model, x)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="'fc' cannot be removed: reaches the model output"):
        s.prune_layer(model.fc, 0.5)
    with pytest.raises(ValueError, match="has 64 output channels"):
        s.remove_channels(model.conv1, [64])
    with pytest.raises(ValueError, match="not a submodule"):
        s.prune_layer(nn.Conv2d(3, 3, 1), 0.5)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_coupled_channels_must_be_removed_together():
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=2), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    s = surgery.Surgeon(model, torch.randn(1, 3, 6, 6))
    with pytest.raises(ValueError, match=r"'0': channels \[0, 4\] must be removed together"):
        s.remove_channels(model[0], [0])
    s.remove_channels(model[0], [0, 4])
    assert model[0].out_channels == 6 and model[2].in_channels == 6 and model[2].groups == 2


def test_failed_rewrite_restores_the_model(monkeypatch):
    model = torchvision.models.resnet18(weights=None)
    s = surgery.Surgeon(model, torch.randn(1, 3, 64, 64))
    before = copy.deepcopy(model.state_dict())

    def boom(*a, **k):
        raise RuntimeError("simulated failure")

    monkeypatch.setattr("surgery.rewrite.verify.compare", boom)  # fails after the rewrite
    with pytest.raises(RuntimeError, match="simulated"):
        s.prune_layer(model.layer1[0].conv1, 0.5)
    assert model.layer1[0].conv1.out_channels == 64
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_remove_filters_bn_kernels_on_plain_layers():
    conv, bn, lin = nn.Conv2d(4, 6, 3), nn.BatchNorm2d(6), nn.Linear(6, 3)
    c2 = surgery.layers.remove_filters(conv, [1, 4])
    assert c2.out_channels == 4 and torch.equal(c2.weight, conv.weight[[0, 2, 3, 5]])
    assert torch.equal(c2.bias, conv.bias[[0, 2, 3, 5]])
    b2 = surgery.layers.remove_bn(bn, torch.tensor([1, 4]))
    assert b2.num_features == 4 and b2.running_var.shape == (4,)
    l2 = surgery.layers.remove_kernels(lin, [0])
    assert l2.in_features == 5 and torch.equal(l2.weight, lin.weight[:, 1:])
    k2 = surgery.layers.remove_kernels(conv, [3])
    assert k2.in_channels == 3 and torch.equal(k2.weight, conv.weight[:, :3])
    assert conv.out_channels == 6 and conv.weight.shape == (6, 4, 3, 3)  # originals untouched


def test_depthwise_and_grouped_convs():
    dw = nn.Conv2d(6, 12, 3, groups=6)                    # channel multiplier 2
    d2 = surgery.layers.remove_filters(dw, [2, 3])               # both filters of group 1
    assert (d2.in_channels, d2.out_channels, d2.groups) == (5, 10, 5)
    d3 = surgery.layers.remove_kernels(dw, [0])                   # input 0 -> its group
    assert (d3.in_channels, d3.out_channels, d3.groups) == (5, 10, 5)
    g = nn.Conv2d(8, 6, 3, groups=2)                       # 4 inputs, 3 outputs per group
    g2 = surgery.layers.remove_kernels(g, [1, 5])                 # the same position in both groups
    assert (g2.in_channels, g2.groups) == (6, 2)
    assert torch.equal(g2.weight, g.weight[:, [0, 2, 3]])
    with pytest.raises(ValueError, match="balanced"):
        surgery.layers.remove_kernels(g, [1])
    with pytest.raises(ValueError, match="keep at least one"):
        surgery.layers.remove_filters(nn.Conv2d(3, 2, 1), [0, 1])
    with pytest.raises(TypeError, match="Conv or Linear"):
        surgery.layers.remove_filters(nn.BatchNorm2d(3), [0])


@pytest.mark.parametrize("granularity", ["weight", "kernel", "pattern"])
@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.8])
def test_sparsify_hits_the_requested_sparsity(granularity, ratio):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)
    report = surgery.sparsity.sparsify(model, ratio, granularity)
    if granularity == "weight":          # global ranking: exact overall
        total = sum(t for _, t in report.layers.values())
        assert sum(z for z, _ in report.layers.values()) == int(ratio * total + 1e-9)
    elif granularity == "kernel":        # per layer: floor(ratio * kernels) whole kernels
        for name, (zeros, total) in report.layers.items():
            if isinstance(model.get_submodule(name), nn.Linear):
                assert zeros == 0           # not a kernel layer: counted in overall, untouched
                continue
            w = model.get_submodule(name).weight
            kernels = w.shape[0] * w.shape[1]
            assert zeros == int(ratio * kernels + 1e-9) * w[0, 0].numel()
            assert ((w.flatten(2) == 0).all(2) | (w.flatten(2) != 0).all(2)).all()
    else:                                # per kernel: floor(ratio * k*k) positions
        for name, (zeros, total) in report.layers.items():
            if model.get_submodule(name).weight[0, 0].numel() == 1:
                continue                    # 1x1 kernels and Linear have no pattern to prune
            w = model.get_submodule(name).weight.flatten(2)
            assert ((w == 0).sum(2) == int(ratio * w.shape[2] + 1e-9)).all()
    assert abs(report.overall - ratio) < 0.12
    assert "overall" in report.summary()


def test_make_permanent_leaves_plain_parameters():
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(1, 3, 64, 64)
    surgery.sparsity.sparsify(model, 0.5, "weight")
    with torch.no_grad():
        masked = model(x)
    assert hasattr(model.conv1, "weight_orig")
    surgery.sparsity.make_permanent(model)
    assert not hasattr(model.conv1, "weight_orig") and not hasattr(model.conv1, "weight_mask")
    assert isinstance(model.conv1.weight, nn.Parameter) and not model.conv1._forward_pre_hooks
    with torch.no_grad():
        assert torch.equal(model(x), masked)
    assert abs(surgery.sparsity.sparsity_report(model).overall - 0.5) < 1e-6


def test_sparsify_rejects_bad_arguments():
    with pytest.raises(ValueError, match="granularity"):
        surgery.sparsity.sparsify(nn.Conv2d(3, 3, 3), 0.5, "channel")
    with pytest.raises(ValueError, match="ratio"):
        surgery.sparsity.sparsify(nn.Conv2d(3, 3, 3), 1.5)
    with pytest.raises(ValueError, match="no layers"):
        surgery.sparsity.sparsify(nn.Sequential(nn.ReLU()), 0.5)
