"""What a new user hits first: options that must act or raise, names as users type them."""

import pytest
import torch
import torch.nn as nn

import criteria
import surgery
from models import create
from surgery.metrics import count_params

X = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def _data(n=2):
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(8, 3, 16, 16, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(n)]


@pytest.mark.parametrize("typed, canonical", [("L1", "l1"), ("L1norm", "l1"), ("magnitude", "l1"),
                                              ("slimming", "bn_scale"), ("l1-norm", "l1"), ("FPGM", "fpgm")])
def test_criterion_names_as_users_type_them(typed, canonical):
    assert type(criteria.get(typed)) is type(criteria.get(canonical))


def test_bn_scale_without_batchnorm_names_the_layer():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"bn_scale: the channels of 0 have no BatchNorm"):
        surgery.prune(model, X, ratio=0.5, criterion="bn_scale")


def test_a_container_in_ratios_means_every_layer_inside():
    model = create("resnet20").eval()
    pruned = surgery.Pruner(model, X, ratio=0.0, ratios={model.layer1: 0.5}).step()
    assert pruned.layer1[0].conv1.out_channels == 8 and pruned.layer2[0].conv1.out_channels == 32


def test_options_that_would_do_nothing_say_so():
    model = create("resnet20").eval()
    with pytest.warns(UserWarning, match=r"ratios\['fc'\] has no effect.*frozen"):
        surgery.Pruner(model, X, ratio=0.5, ratios={"fc": 0.5}).plan()
    with pytest.warns(UserWarning, match="no effect without global_pruning"):
        surgery.Pruner(model, X, ratio=0.5, normalize="lamp").plan()


def test_ocap_target_mode_removes_exactly_the_ratio():
    model = create("resnet20").eval()
    l1 = surgery.prune(model, X, ratio=0.5)
    target = surgery.prune(model, X, ratio=0.5, criterion=criteria.get("ocap", mode="target"), data=_data())
    union = surgery.prune(model, X, ratio=0.5, criterion=criteria.get("ocap", mode="union"), data=_data())
    assert count_params(target) == count_params(l1) < count_params(union)


@pytest.mark.parametrize("make", [lambda: torch.utils.data.TensorDataset(torch.randn(20, 3, 16, 16),
                                                                          torch.randint(0, 10, (20,))),
                                  lambda: torch.randn(8, 3, 16, 16)], ids=["TensorDataset", "tensor"])
def test_data_accepts_datasets_and_a_tensor_batch(make):
    criterion = "taylor" if isinstance(make(), torch.utils.data.Dataset) else "coverage"
    pruned = surgery.prune(create("resnet20").eval(), X, ratio=0.5, criterion=criterion, data=make())
    assert count_params(pruned) < count_params(create("resnet20"))


def test_surgeon_prune_layer_takes_data():
    model = create("resnet20").eval()
    surgeon = surgery.Surgeon(model, X)
    surgeon.prune_layer("layer1.0.conv1", 0.5, "taylor", data=_data(), max_batches=1)
    assert model.layer1[0].conv1.out_channels == 8


def test_prune_config_round_trips_through_dict_and_yaml(tmp_path):
    config = surgery.PruneConfig(ratio=0.4, global_pruning=True, ratios={"layer1": 0.2}, ignored_layers=("fc",))
    assert surgery.PruneConfig.from_dict(config.to_dict()) == config
    config.to_yaml(tmp_path / "c.yaml")
    assert surgery.PruneConfig.from_yaml(tmp_path / "c.yaml") == config
    with pytest.raises(ValueError, match="did you mean 'ratio'"):
        surgery.PruneConfig.from_dict({"ratoi": 0.5})


def test_sparsify_dry_run_and_one_definition_of_sparsity():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 14 * 14, 4))
    before = [p.clone() for p in model.parameters()]
    planned = surgery.sparsity.sparsify(model, 0.5, "kernel", dry_run=True)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    done = surgery.sparsity.sparsify(model, 0.5, "kernel")
    assert planned.layers == done.layers and done.overall == surgery.sparsity.sparsity_report(model).overall
    assert set(done.layers) == {"0", "3"}  # every Conv and Linear counts; the Linear is untouched
    assert done.layers["3"][0] == 0 and 0 < done.overall < 0.5


def test_report_columns_never_run_together():
    model = create("vgg16_bn").eval()
    x = torch.randn(1, 3, 32, 32)
    table = surgery.report(model, surgery.prune(model, x, ratio=0.5), x).summary()
    total = table.splitlines()[-1]
    assert "%)  " in total and "->" in total
