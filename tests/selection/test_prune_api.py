"""Behaviour of surgery.prune as a user sees it."""
import copy
import io

import pytest
import torch
import torch.nn as nn

import surgery
from support.oracle import prepared, prune_quiet
from models import create
from surgery.metrics import count_params


def test_original_model_is_untouched(x32):
    m = prepared(create("resnet20"))
    before = copy.deepcopy(m.state_dict())
    p = prune_quiet(m, x32, ratio=0.5)
    assert p is not m
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert m.conv1.out_channels == 16


def test_inplace_modifies_and_returns_the_model(x32):
    m = create("resnet20").double()
    p = prune_quiet(m, x32, ratio=0.5, inplace=True)
    assert p is m and m.conv1.out_channels == 8


def test_parameters_shrink_by_the_expected_amount():
    # conv(3->16)+bn -> conv(16->16)+bn -> linear(16->4); ratio 0.25 removes 4 of each 16
    m = nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 16, 3),
                      nn.BatchNorm2d(16), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))
    p = prune_quiet(m, torch.randn(1, 3, 16, 16), ratio=0.25)
    expected = (3 * 12 * 9 + 12) + 2 * 12 + (12 * 12 * 9 + 12) + 2 * 12 + (12 * 4 + 4)
    assert count_params(p) == expected


@pytest.mark.parametrize("ratio,kept", [(0.0, 16), (0.3, 12), (0.5, 8), (0.99, 1)])
def test_floor_of_ratio_times_size_is_removed_keeping_one(ratio, kept, x32):
    p = prune_quiet(create("resnet20").double(), x32, ratio=ratio)
    assert p.conv1.out_channels == kept


def test_output_channels_are_never_pruned(x32):
    p = prune_quiet(create("resnet20", num_classes=7).double(), x32, ratio=0.5)
    assert p.fc.out_features == 7 and p(x32).shape == (2, 7)


def test_frozen_groups_stay_whole(x32):
    m = create("resnet20").double()
    g = surgery.trace(m, x32, ignored_layers=[m.layer1[0].conv1])
    frozen = [grp for grp in g.groups if not grp.prunable]
    assert any("ignored_layers" in grp.reason for grp in frozen)
    p = prune_quiet(m, x32, ratio=0.5, ignored_layers=[m.layer1[0].conv1])
    assert p.layer1[0].conv1.out_channels == 16 and p.layer1[0].bn1.num_features == 16
    assert p.layer1[0].conv1.in_channels == 8  # its input channels still follow the stream


def test_ignored_layers_by_name(x32):
    p = prune_quiet(create("resnet20").double(), x32, ratio=0.5, ignored_layers=["layer2"])
    assert all(b.conv1.out_channels == 32 and b.conv2.out_channels == 32 for b in p.layer2)


def test_state_is_kept_dtype_requires_grad_and_mode(x32):
    m = create("resnet20").double().train()
    m.conv1.weight.requires_grad_(False)
    p = prune_quiet(m, x32, ratio=0.5)
    assert p.training and p.layer1[0].bn1.training
    assert p.conv1.weight.dtype == torch.float64 and not p.conv1.weight.requires_grad
    assert p.layer1[0].conv1.weight.requires_grad
    assert m.training  # tracing put nothing in eval mode for good


def test_pruned_model_trains_and_saves(x32):
    p = prune_quiet(create("vgg16_bn").double(), x32, ratio=0.5)
    loss = p(x32).sum()
    loss.backward()
    assert all(q.grad is not None for q in p.parameters())
    buf = io.BytesIO()
    torch.save(p.state_dict(), buf)
    buf.seek(0)
    fresh = copy.deepcopy(p)
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    assert torch.equal(fresh.eval()(x32), p.eval()(x32))


def test_criterion_object_and_name_agree(x32):
    import criteria
    m = create("resnet20").double()
    a = prune_quiet(m, x32, ratio=0.5, criterion="l1")
    b = prune_quiet(m, x32, ratio=0.5, criterion=criteria.L1Norm())
    assert all(torch.equal(u, v) for u, v in zip(a.state_dict().values(), b.state_dict().values()))


def test_l1_removes_the_lowest_l1_filters():
    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3))
    with torch.no_grad():
        m[0].weight.copy_(torch.arange(1, 9, dtype=torch.float32).view(8, 1, 1, 1).expand(8, 3, 3, 3))
        m[0].weight[[2, 5, 7]] *= 0.01
    p = prune_quiet(m, torch.randn(1, 3, 8, 8), ratio=0.375)
    assert p[0].out_channels == 5
    kept = p[0].weight[:, 0, 0, 0].tolist()
    assert kept == pytest.approx([1.0, 2.0, 4.0, 5.0, 7.0])


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5, float("nan")])
def test_bad_ratio_raises_value_error(ratio, x32):
    with pytest.raises(ValueError, match="ratio must be in"):
        surgery.prune(create("resnet20"), x32, ratio=ratio)


def test_non_number_ratio_raises_type_error(x32):
    with pytest.raises(TypeError, match="ratio"):
        surgery.prune(create("resnet20"), x32, ratio="half")


def test_wrong_input_shape_names_node_and_fix():
    with pytest.raises(surgery.ShapeError, match=r"(?s)node 'conv1'.*Fix: pass example_inputs"):
        surgery.prune(create("resnet20"), torch.randn(1, 5, 32, 32), ratio=0.5)


def test_bad_example_inputs_type():
    with pytest.raises(TypeError, match="example_inputs"):
        surgery.prune(create("resnet20"), "an image", ratio=0.5)


def test_unknown_criterion_lists_the_available_ones(x32):
    with pytest.raises(ValueError, match="unknown criterion 'nope'; available: .*l1"):
        surgery.prune(create("resnet20"), x32, ratio=0.5, criterion="nope")


def test_not_a_module_raises_type_error(x32):
    with pytest.raises(TypeError, match="torch.nn.Module"):
        surgery.prune(lambda x: x, x32, ratio=0.5)


def test_bad_ignored_layer_name(x32):
    with pytest.raises(ValueError, match="no submodule named 'nope'"):
        surgery.prune(create("resnet20"), x32, ratio=0.5, ignored_layers=["nope"])
