"""Issue 28: "verified" means something was compared; loads are all or nothing; hand-edited
plans and non-finite scores are refused. Each test reproduces a hole found by an adversarial
run (it failed before the fix)."""
import json
import warnings

import pytest
import torch
import torch.nn as nn

import criteria
import surgery
from surgery.testing import randomize

X = torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


def _net():
    torch.manual_seed(0)
    return randomize(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                   nn.Conv2d(8, 8, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                   nn.Linear(8, 4)).double().eval())


def _state(model):
    return {k: v.detach().clone() for k, v in list(model.named_parameters()) + list(model.named_buffers())}


def _identical(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)


# ---------------------------------------------------------------- 1. load is all or nothing
def test_a_failed_load_with_a_non_tensor_entry_leaves_the_model_bit_identical(tmp_path):
    path = tmp_path / "m.pt"
    surgery.save(surgery.prune(_net(), X, ratio=0.5, ignored_layers=["0"]), path)  # layers 0, 1 not rebuilt
    data = torch.load(path, weights_only=True)
    data["state_dict"]["7.bias"] = [1.0] * 4  # weights_only allows lists; a key after theirs
    torch.save(data, path)
    fresh = _net()
    with torch.no_grad():  # values the file does not hold, so a partial copy would show
        for p in fresh.parameters():
            p.add_(1.0)
    before = _state(fresh)
    with pytest.raises(ValueError, match="not tensors"):
        surgery.load(path, model=fresh)
    assert _identical(before, _state(fresh)) and fresh[0].out_channels == 8


def test_a_load_never_writes_into_the_callers_tensors(tmp_path):
    path = tmp_path / "m.pt"
    pruned = surgery.prune(_net(), X, ratio=0.5)
    surgery.save(pruned, path)
    fresh = _net()
    head = fresh[7].bias  # a layer the plan does not rebuild (its outputs are model outputs)
    kept = head.detach().clone()
    loaded = surgery.load(path, model=fresh)
    assert torch.equal(head.detach(), kept)  # the old tensor object was not written into
    assert torch.equal(loaded[7].bias, pruned[7].bias)
    assert torch.allclose(loaded(X), pruned(X))


# ---------------------------------------------------------------- 2. verification counts what it compared
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_an_example_input_with_no_finite_value_is_refused(value):
    x = torch.full((2, 3, 8, 8), value, dtype=torch.float64)
    with pytest.raises(ValueError, match="no finite value"):
        surgery.prune(_net(), x, ratio=0.5)
    with pytest.raises(ValueError, match="no finite value"):
        surgery.trace(_net(), x)


def test_a_nan_weight_gives_not_verified_never_verified():
    model = _net()
    with torch.no_grad():
        model[0].bias[0] = float("nan")  # reaches every output through BN, pooling and the head
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pruned = surgery.prune(model, X, ratio=0.5)
    check = pruned.surgery_verification
    assert not check.exact and check.elements == 0 and check.total == 8
    assert str(check).startswith("not verified") and "finite" in str(check)
    assert any("0.bias" in str(w.message) and "NaN or inf" in str(w.message) for w in caught)


def test_the_record_states_how_many_values_were_compared():
    check = surgery.prune(_net(), X, ratio=0.5).surgery_verification
    assert check.exact and check.elements == check.total == 8
    assert "8 of 8 output values compared" in str(check)


def test_a_wrong_rewrite_is_caught_on_the_finite_values_when_some_are_not():
    class Head(nn.Module):  # one output column is always NaN; the other columns must still be compared
        def __init__(self):
            super().__init__()
            self.body = _net()

        def forward(self, x):
            y = self.body(x)
            return torch.cat([y, torch.full_like(y[:, :1], float("nan"))], 1)

    model = Head().eval()
    pruned = surgery.prune(model, X, ratio=0.5)
    check = pruned.surgery_verification
    assert check.exact and check.elements == 8 and check.total == 10


# ---------------------------------------------------------------- 6. plan files validated strictly
@pytest.mark.parametrize("indices", [[1.9, 3.2], [True, False], [1, 1], [9]])
def test_hand_edited_plan_indices_are_refused_by_apply_plan_and_load(indices, tmp_path):
    pruned = surgery.prune(_net(), X, ratio=0.5)
    plan = json.loads(pruned.surgery_history[-1])
    plan["remove"][0]["indices"] = indices
    with pytest.raises((ValueError, TypeError), match="indices|repeat|out of range"):
        surgery.apply_plan(_net(), surgery.Plan.from_dict(plan), X)
    path = tmp_path / "m.pt"
    surgery.save(pruned, path)
    data = torch.load(path, weights_only=True)
    data["history"] = json.dumps([json.dumps(plan)])
    torch.save(data, path)
    with pytest.raises((ValueError, TypeError), match="indices|repeat|out of range"):
        surgery.load(path, model=_net())


@pytest.mark.parametrize("indices", [[1.0, 3.0], [True, False], [1, 1]])
def test_the_surgeon_refuses_the_same_indices(indices):
    model = _net()
    with pytest.raises((ValueError, TypeError), match="indices|repeat"):
        surgery.Surgeon(model, X).remove_channels(model[0], indices)
    assert model[0].out_channels == 8


# ---------------------------------------------------------------- 8. non-finite scores
class NaNScores(criteria.Criterion):
    def score_group(self, view):
        s = torch.arange(view.size, dtype=torch.float64)
        s[1] = float("nan")
        return s


@pytest.mark.parametrize("global_pruning", [False, True])
def test_a_criterion_returning_nan_is_refused_naming_it_and_the_layer(global_pruning):
    with pytest.raises(ValueError, match=r"NaNScores\)? returned non-finite scores .* of 0"):
        surgery.prune(_net(), X, ratio=0.5, criterion=NaNScores(), global_pruning=global_pruning)
    with pytest.raises(ValueError, match="non-finite"):
        NaNScores().select(nn.Conv2d(3, 8, 3), 2)


# ---------------------------------------------------------------- 3. tracing leaves no trace
class Caching(nn.Module):
    """Writes into containers it owns during forward: a dict, a list, and a read-before-write EMA."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)
        self.cache, self.seen = {}, []
        self.stats = {"ema": torch.zeros((), dtype=torch.float64)}

    def forward(self, x):
        y = torch.relu(self.a(x))
        self.cache["scale"] = y.abs().mean()
        self.seen.append(y.shape[1])
        self.stats["ema"] = 0.9 * self.stats["ema"] + 0.1 * y.mean()
        return self.b(y).mean((2, 3))


def _is_real(v):
    return type(v) in (torch.Tensor, int, float)


@pytest.mark.parametrize("tracer", ["fx", "export"])
def test_tracing_and_pruning_leave_the_users_containers_as_they_were(tracer):
    torch.manual_seed(0)
    model = randomize(Caching().double().eval())
    ema = model.stats["ema"]
    surgery.trace(model, X, tracer=tracer)
    assert model.cache == {} and model.seen == [] and model.stats["ema"] is ema
    pruned = surgery.prune(model, X, ratio=0.5, tracer=tracer, inplace=True)
    assert pruned is model and pruned.cache == {} and pruned.seen == [] and pruned.stats["ema"] is ema
    out = pruned(X)  # the user's own forward still runs, and writes real values
    assert out.shape == (2, 4) and all(_is_real(v) for v in list(pruned.cache.values()) + pruned.seen)


# ---------------------------------------------------------------- 4. train mode by graph, not by text
def _gate(mod, y):
    """The read of ``training`` sits in a helper: the module's own source never says it."""
    if mod.training:
        return y + y.mean(1, keepdim=True)  # mixes channels only in training: the eval trace never sees it
    return y


class HelperGated(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.b(_gate(self, torch.relu(self.a(x)))).mean((2, 3))


def test_a_training_read_in_a_helper_function_is_checked_in_train_mode():
    torch.manual_seed(0)
    model = randomize(HelperGated().double().eval())
    before = _state(model)
    with pytest.raises(surgery.VerificationError, match="train mode"):
        surgery.prune(model, X, ratio=0.5)
    assert _identical(before, _state(model))


def test_a_model_whose_graphs_agree_in_both_modes_skips_the_train_check():
    from surgery.rewrite.train_check import branches_on_training
    assert not branches_on_training(_net(), X)
    assert branches_on_training(HelperGated(), X)


def test_without_fx_a_recorded_forward_decides():
    from surgery.rewrite.train_check import branches_on_training

    class Untraceable(HelperGated):
        def forward(self, x):
            y = torch.relu(self.a(x))
            if float(y.sum()) > -1e9:  # data-dependent: fx cannot trace this
                y = _gate(self, y)
            return self.b(y).mean((2, 3))

    class Plain(Untraceable):
        def forward(self, x):
            y = torch.relu(self.a(x))
            if float(y.sum()) > -1e9:
                y = y * 1.0
            return self.b(y).mean((2, 3))

    model = Untraceable()
    assert branches_on_training(model, X.float()) and "training" in vars(model) and type(model) is Untraceable
    assert not branches_on_training(Plain(), X.float())


# ---------------------------------------------------------------- 5. layer names checked when the config is resolved
@pytest.mark.parametrize("override, key", [("prune.ignored_layers=[no_such_layer]", "prune.ignored_layers"),
                                           ("prune.ratios={no_such_layer: 0.3}", "prune.ratios"),
                                           ("prune.leaf_modules=[nope]", "prune.leaf_modules")])
def test_a_layer_name_the_model_lacks_stops_the_run_before_training(override, key, tmp_path, monkeypatch):
    from surgery.pipeline import ConfigError, resolve, run, runner
    with pytest.raises(ConfigError, match=key + r".*no submodule named"):
        resolve(overrides=[override], env={})
    trained = []
    monkeypatch.setattr(runner, "fit", lambda *a, **k: trained.append(1))
    section, value = override.split("=", 1)
    import yaml
    with pytest.raises(ConfigError, match=key):
        run({"train": {"epochs": 1}, "prune": {section.split(".")[1]: yaml.safe_load(value)},
             "out": str(tmp_path / "run")})
    assert trained == [] and not (tmp_path / "run" / "checkpoints").exists()


def test_layer_names_the_model_has_pass():
    from surgery.pipeline import resolve
    cfg = resolve(overrides=["prune.ignored_layers=[classifier]", "prune.ratios={features.0: 0.3}"], env={})
    assert cfg.prune.ignored_layers == ["classifier"] and cfg.prune.ratios == {"features.0": 0.3}


# ---------------------------------------------------------------- 7. size attributes of blocks that only chain
class Chain(nn.Module):
    """Its forward only chains submodules; another method reshapes by ``self.c``."""

    def __init__(self):
        super().__init__()
        self.c = 8
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.b(self.a(x))

    def forward_grouped(self, x):  # never traced: reads the width from self.c
        y = self.a(x)
        return self.b(y.view(y.shape[0], self.c, -1).view_as(y))


class ChainNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.block, self.head = Chain(), nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.block(x).mean((2, 3)))


def test_a_size_attribute_of_a_block_that_only_chains_submodules_follows():
    torch.manual_seed(0)
    model = randomize(ChainNet().double().eval())
    pruned = surgery.prune(model, X, ratio=0.5)
    assert pruned.block.a.out_channels == 4 and pruned.block.c == 4
    assert torch.allclose(pruned.block.forward_grouped(X), pruned.block(X))


# ---------------------------------------------------------------- (issue 31, item 5) load keeps the saved mode
@pytest.mark.parametrize("mode", [False, True])
def test_load_returns_the_model_in_the_mode_it_was_saved_in(mode, tmp_path):
    small = surgery.prune(_net(), X, ratio=0.5).train(mode)
    surgery.save(small, tmp_path / "m.pt", architecture=None)
    fresh = _net().train(not mode)  # a fresh model in the other mode
    back = surgery.load(tmp_path / "m.pt", model=fresh)
    assert back.training == mode and all(m.training == mode for m in back.modules())
    if not mode:
        assert torch.equal(back(X), small(X))  # no .eval() needed for the saved outputs


def test_a_temporary_float64_cast_restores_values_bit_for_bit_and_keeps_shared_storage():
    from surgery.rewrite.verify import cast_temporarily
    torch.manual_seed(0)
    a, b, c = nn.Linear(3, 3), nn.Linear(3, 3), nn.Linear(3, 3).to(torch.bfloat16)
    b.weight = nn.Parameter(a.weight.data)  # two parameters over one storage
    model = nn.Sequential(a, b, c)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with cast_temporarily(model, torch.float64):
        assert all(p.dtype == torch.float64 for p in model.parameters())
    assert a.weight.data_ptr() == b.weight.data_ptr() and c.weight.dtype == torch.bfloat16
    assert all(torch.equal(v, before[k]) and v.dtype == before[k].dtype for k, v in model.state_dict().items())
