"""Pruner budgets, global ranking, targets, iterative steps, plans, save/load, reports."""
import copy
import json
import warnings

import pytest
import torch
import torch.nn as nn
import torchvision

import surgery
from models import create
from surgery import Pruner
from surgery.metrics import count_flops, count_params

X32 = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
X64 = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def quiet(fn, *a, **k):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*a, **k)


class TwoScales(nn.Module):
    """Two parallel 16-channel branches; branch b's weights are 100x larger."""
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 16, 3), nn.Conv2d(3, 16, 3)
        self.head = nn.Linear(32, 2)
        with torch.no_grad():
            self.b.weight.mul_(100.0)

    def forward(self, x):
        return self.head(torch.cat([self.a(x), self.b(x)], 1).mean((2, 3)))


def test_global_and_local_pick_different_layers():
    m = TwoScales()
    local = Pruner(m, X32, ratio=0.5, normalize="none").run()
    glob = Pruner(m, X32, ratio=0.5, global_pruning=True, normalize="none").run()
    assert (local.a.out_channels, local.b.out_channels) == (8, 8)
    assert glob.a.out_channels + glob.b.out_channels == 16
    assert glob.a.out_channels == 1 and glob.b.out_channels == 15  # the small-weight layer goes first


def test_global_with_normalisation_balances_layer_scales():
    glob = Pruner(TwoScales(), X32, ratio=0.5, global_pruning=True, normalize="max").run()
    assert glob.a.out_channels + glob.b.out_channels == 16 and min(glob.a.out_channels, glob.b.out_channels) > 1


@pytest.mark.parametrize("n", [4, 8])
def test_round_to_gives_multiples(n):
    p = Pruner(create("resnet56"), X32, ratio=0.3, round_to=n).run()
    sizes = [mod.out_channels for mod in p.modules() if isinstance(mod, nn.Conv2d)]
    assert all(s % n == 0 for s in sizes), sizes
    assert count_params(p) < count_params(create("resnet56"))


def test_min_channels_and_max_ratio_hold_under_global_pruning():
    m = create("resnet56")
    p = Pruner(m, X32, ratio=0.7, global_pruning=True, max_ratio=0.6, min_channels=5).run()
    graph_before = surgery.trace(m, X32)
    kept = {mod_name: mod.out_channels for mod_name, mod in p.named_modules() if isinstance(mod, nn.Conv2d)}
    for g in graph_before.prunable_groups:
        anchor = g.producers[0].name
        assert kept[anchor] >= 5
        assert kept[anchor] >= g.size - int(0.6 * g.size)


def test_per_layer_ratios_apply_to_the_groups_they_lead():
    m = create("vgg16_bn")
    p = Pruner(m, X32, ratio=0.0, ratios={m.features[0]: 0.5, "features.3": 0.25}).run()
    assert p.features[0].out_channels == 32 and p.features[3].out_channels == 48
    assert p.features[7].out_channels == 128


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_target_flops_lands_within_two_percent(name):
    m = torchvision.models.get_model(name, weights=None).eval()
    p = quiet(Pruner(m, X64, target_flops=0.5).run)
    kept = count_flops(p, X64) / count_flops(m, X64)
    assert abs(kept - 0.5) <= 0.02, kept


def _counting(base):
    """``base`` recording its group scorings ("score") and selections ("select")."""
    calls = []

    class Counting(type(base)):
        def score_group(self, view):
            calls.append("score")
            return super().score_group(view)
    if type(base).select is not surgery.criteria.Criterion.select:  # a criterion with its own selection
        def select(self, target, n):
            calls.append("select")
            return type(base).select(self, target, n)
        Counting.select = select
    c = Counting.__new__(Counting)
    c.__dict__.update(vars(base))
    return c, calls


def test_remembered_scores_each_group_once_and_selects_the_same():
    import criteria
    from surgery.select.selection import Remembered, select_units
    graph = surgery.trace(create("resnet20"), X32)
    groups = graph.prunable_groups
    for name in ("l1", "kmeans"):
        counting, calls = _counting(criteria.get(name))
        remembered = Remembered(counting)
        for n in (1, 3, 5, 2):
            for g in groups:
                assert (select_units(graph, g, remembered, n) == select_units(graph, g, criteria.get(name), n)).all()
        if name == "l1":  # ranked by score: each group scored once, for all four counts
            assert calls == ["score"] * len(groups)
        else:  # k-means selects by clustering: asked every time, never from memory
            assert calls.count("select") == 4 * len(groups)


def test_cost_model_kept_equals_the_per_dimension_product():
    import numpy as np
    from surgery.select.cost import CostModel
    m = create("resnet20")
    graph = surgery.trace(m, X32)
    cost = CostModel(m, graph, X32)
    rng = np.random.default_rng(0)
    units = np.concatenate([g.units for g in graph.prunable_groups])
    for _ in range(5):
        removed = rng.choice(units, size=len(units) // 3, replace=False)
        factor = np.ones(len(cost._names))
        for d, i in enumerate(cost._owner):  # each dimension on its own, the plain way
            ids = cost._ids[cost._dim == d]
            factor[i] *= 1.0 - np.isin(ids, removed).sum() / len(ids)
        want = (cost._fixed + (cost._cost * factor).sum()) / cost.total
        assert cost.kept(removed) == pytest.approx(want, rel=1e-12)
    assert cost.kept(units[:0]) == pytest.approx(1.0)


def test_target_params():
    m = create("resnet56")
    p = quiet(Pruner(m, X32, target_params=0.4).run)
    assert abs(count_params(p) / count_params(m) - 0.4) <= 0.02


@pytest.mark.parametrize("schedule", ["linear", "exponential", lambda i, n, final: final * (i / n) ** 2])
def test_iterative_steps_reach_the_final_ratio(schedule):
    m = create("resnet56")
    pruner = Pruner(m, X32, ratio=0.5, iterative_steps=3, schedule=schedule)
    seen = [model.conv1.out_channels for model in pruner.steps()]
    assert len(seen) == 3 and seen[-1] == 8 and seen == sorted(seen, reverse=True)
    assert pruner.done and len(pruner.plans) == 3
    with pytest.raises(RuntimeError, match="steps are done"):
        pruner.step()


def test_on_step_hook_sees_every_step():
    calls = []
    Pruner(create("resnet20"), X32, ratio=0.5, iterative_steps=2).run(lambda model, i: calls.append(i))
    assert calls == [1, 2]


def test_plan_is_a_dry_run_with_a_summary():
    m = create("resnet20")
    before = copy.deepcopy(m.state_dict())
    pruner = Pruner(m, X32, ratio=0.5, inplace=True)
    plan = pruner.plan()
    assert plan.removed_channels > 0 and m.conv1.out_channels == 16
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    table = plan.summary()
    row = next(r for r in table.splitlines() if r.startswith("conv1 "))
    assert row.split()[-3:] == ["16", "8", "8"]  # before, removed, kept
    preview = str(pruner.preview())
    assert "conv1" in preview and "16 -> 8" in preview and "total" in preview
    assert m.conv1.out_channels == 16


def test_plan_round_trips_through_json_and_gives_the_identical_model():
    m = create("resnet20")
    pruner = Pruner(m, X32, ratio=0.4, criterion="fpgm")
    plan = pruner.plan()
    text = plan.to_json()
    assert json.loads(text)["format"] == "torch-surgery-plan"
    a = pruner.step()
    b = surgery.apply_plan(copy.deepcopy(m), surgery.Plan.from_json(text))
    assert all(torch.equal(u, v) for u, v in zip(a.state_dict().values(), b.state_dict().values()))


def test_a_plan_in_the_same_json_shape_from_another_tool_applies():
    m = create("vgg16_bn")
    plan = {"format": "torch-surgery-plan", "version": 1, "model": "VGG",
            "inputs": [{"shape": [1, 3, 32, 32], "dtype": "float32"}],
            "remove": [{"layer": "features.0", "dim": "out", "size": 64, "indices": [0, 1, 2, 3]},
                       {"layer": "features.24", "size": 512, "indices": list(range(100))}]}
    p = surgery.apply_plan(m, plan)
    assert p.features[0].out_channels == 60 and p.features[3].in_channels == 60
    assert p.features[24].out_channels == 412 and p.features[27].in_channels == 412
    assert torch.equal(p.features[0].weight, m.features[0].weight[4:])


def test_plan_for_another_architecture_fails_clearly():
    plan = Pruner(create("resnet20"), X32, ratio=0.5).plan()
    with pytest.raises(ValueError, match=r"made for CifarResNet with 272,474 parameters, this is CifarResNet with 855,770"):
        surgery.apply_plan(create("resnet56"), plan)
    with pytest.raises(ValueError, match="does not fit the model"):
        surgery.apply_plan(create("vgg16_bn"), plan)
    with pytest.raises(ValueError, match="not a torch-surgery plan"):
        surgery.Plan.from_dict({"remove": []})


def test_save_and_load_round_trip_exactly(tmp_path):
    m = create("resnet20").eval()
    pruner = Pruner(m, X32, ratio=0.5, iterative_steps=2)
    pruned = pruner.run()
    with torch.no_grad():
        for p in pruned.parameters():
            p.add_(0.01)  # "fine-tuned" weights must come back too
    path = tmp_path / "pruned.pt"
    surgery.save(pruned, path)
    back = surgery.load(path, model=create("resnet20"))
    with torch.no_grad():
        assert torch.equal(back.eval()(X32), pruned.eval()(X32))
    data = torch.load(path, weights_only=True)  # loadable without pickled code
    assert len(json.loads(data["history"])) == 2


def test_save_load_after_surgeon_edits(tmp_path):
    m = create("vgg16_bn")
    s = surgery.Surgeon(m, X32)
    s.prune_layer(m.features[0], 0.5)
    s.prune_layer(m.features[10], 0.25)
    surgery.save(m, tmp_path / "m.pt")
    back = surgery.load(tmp_path / "m.pt", model=create("vgg16_bn"))
    assert back.features[0].out_channels == 32 and back.features[10].out_channels == 96
    assert torch.equal(back.eval()(X32), m.eval()(X32))


def test_load_into_the_wrong_architecture_fails_clearly(tmp_path):
    surgery.save(surgery.prune(create("resnet20"), X32, ratio=0.5), tmp_path / "r.pt")
    with pytest.raises(ValueError, match="does not fit the model"):
        surgery.load(tmp_path / "r.pt", model=create("vgg16_bn"))


def test_report_returns_data_and_prints():
    m = create("resnet20")
    p = surgery.prune(m, X32, ratio=0.5)
    r = surgery.report(m, p, X32)
    assert r.params == (count_params(m), count_params(p))
    assert r.flops[0] == count_flops(m, X32) and r.flops[1] == count_flops(p, X32)
    row = [x for x in r.layers if x.name == "conv1"][0]
    assert row.channels == (16, 8) and row.params[1] < row.params[0] and row.flops[1] < row.flops[0]
    assert "conv1" in str(r) and "total" in str(r)


@pytest.mark.parametrize("options,message", [
    (dict(ratio=1.2), "ratio must be in"),
    (dict(max_ratio=0.0), "max_ratio must be in"),
    (dict(min_channels=0), "min_channels must be a positive integer"),
    (dict(round_to=0), "round_to must be a positive integer"),
    (dict(target_flops=1.5), "target_flops must be in"),
    (dict(target_flops=0.5, target_params=0.5), "either target_flops or target_params"),
    (dict(iterative_steps=0), "iterative_steps must be a positive integer"),
    (dict(schedule="cosine"), "schedule must be"),
    (dict(ratios={"nope": 0.5}), "no submodule named 'nope'"),
    (dict(ratios={"conv1": 1.0}), r"ratios\['conv1'\] must be in"),
    (dict(normalize="z"), "normalize must be one of"),
])
def test_bad_budgets_raise_clear_errors(options, message):
    with pytest.raises(ValueError, match=message):
        Pruner(create("resnet20"), X32, **options)
