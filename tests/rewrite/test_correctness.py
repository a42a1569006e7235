"""Never a silently wrong model: verification by default, the reproducers that motivated
it (each once returned a wrong model or crashed), and named errors for bad input."""
from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import surgery
from surgery.extend import PerChannelHandler, per_channel, registered_layer
from surgery.metrics import count_params
from surgery.testing import assert_exact, max_error, randomize

X = torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


def cbr(c=8):
    return nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c))


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same_state(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- a deliberately wrong handler
class Scale(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.channels, self.weight = c, nn.Parameter(torch.rand(c) + 0.5)

    def forward(self, x):
        return x * self.weight[:, None, None]


class ReversedScaleHandler(PerChannelHandler):
    """Slices in the wrong order: keeps the right count, takes the channels reversed."""
    size_attr, tensors = "channels", ("weight",)

    def prune(self, module, keep_in, keep_out):
        keep = keep_out if keep_out is not None else keep_in
        return super().prune(module, None, list(reversed(list(keep))) if keep is not None else None)


class WithScale(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.s, self.b, self.fc = cbr(), Scale(8), nn.Conv2d(8, 8, 1), nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.b(self.s(self.a(x))).mean((2, 3)))


@pytest.fixture
def wrong_handler():
    with registered_layer(Scale, rule=lambda ctx, node: per_channel(ctx, node, 1), handler=ReversedScaleHandler()):
        yield


@pytest.mark.parametrize("inplace", [False, True])
def test_a_wrong_handler_raises_verification_error_and_leaves_the_model(wrong_handler, inplace):
    model = randomize(WithScale().double().eval())
    before = _state(model)
    with pytest.raises(surgery.VerificationError, match=r"first layer whose output diverges is '(s|b)'"):
        surgery.prune(model, X, ratio=0.5, inplace=inplace)
    assert _same_state(before, _state(model)) and model.a[0].out_channels == 8 and isinstance(model.s, Scale)


def test_a_wrong_handler_also_fails_in_the_surgeon_and_pruner(wrong_handler):
    model = randomize(WithScale().double().eval())
    before = _state(model)
    with pytest.raises(surgery.VerificationError):
        surgery.Surgeon(model, X).prune_layer("a.0", 0.5)
    with pytest.raises(surgery.VerificationError):
        surgery.Pruner(model, X, ratio=0.5, inplace=True).step()
    assert _same_state(before, _state(model))


def test_verify_false_skips_the_comparison(wrong_handler):
    model = randomize(WithScale().double().eval())
    pruned = surgery.prune(model, X, ratio=0.5, verify=False)  # wrong, and the user asked not to check
    assert not pruned.surgery_verification.exact and "verify=False" in str(pruned.surgery_verification)


def test_inplace_failure_of_any_kind_restores_the_model(monkeypatch):
    model = randomize(nn.Sequential(cbr(), nn.ReLU(), nn.Conv2d(8, 8, 1), nn.Flatten(), nn.Linear(512, 4)).double())
    before = _state(model)

    def boom(*args, **kwargs):
        raise RuntimeError("simulated failure inside the rewrite")

    monkeypatch.setattr("surgery.rewrite.rebuild._slice_owned", boom)
    monkeypatch.setattr("surgery.rewrite.rebuild.retie", boom)
    with pytest.raises(RuntimeError, match="simulated"):
        surgery.prune(model, X, ratio=0.5, inplace=True)
    assert _same_state(before, _state(model)) and model[0][0].out_channels == 8


def test_verification_result_says_what_was_checked():
    model = randomize(nn.Sequential(cbr(), nn.ReLU(), nn.Conv2d(8, 8, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                    nn.Linear(8, 4)).double().eval())
    pruned = surgery.prune(model, X, ratio=0.5)
    assert pruned.surgery_verification.exact and pruned.surgery_verification.max_error < 1e-12
    assert_exact(model, pruned, X)


def test_pruning_through_a_layernorm_warns_and_reports_the_unchecked_norm():
    class LN(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.ln, self.b = nn.Linear(6, 8), nn.LayerNorm(8), nn.Linear(8, 3)

        def forward(self, x):
            return self.b(self.ln(self.a(x)))

    model = LN().double()
    with pytest.warns(UserWarning, match="normalisations over channels.*'ln'"):
        pruned = surgery.prune(model, torch.randn(4, 6, dtype=torch.float64), ratio=0.5)
    check = pruned.surgery_verification
    assert not check.exact and any("LayerNorm 'ln'" in u for u in check.unchecked)


# ---------------------------------------------------------------- reproducers
class KwBatchNorm(nn.Module):  # timm's BatchNormAct2d calls F.batch_norm with keyword weight/bias
    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Linear(8, 4)

    def forward(self, x):
        y = F.batch_norm(self.conv(x), self.bn.running_mean, self.bn.running_var, weight=self.bn.weight,
                         bias=self.bn.bias, training=False, eps=1e-5)
        return self.fc(y.mean((2, 3)))


class ClampByParam(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.m, self.fc = cbr(), nn.Parameter(torch.rand(1, 8, 1, 1) + 0.5), nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(torch.clamp(self.a(x), max=self.m).mean((2, 3)))


class SizeAsValue(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.fc = cbr(), nn.Linear(8, 4)

    def forward(self, x):
        y = self.a(x)
        return self.fc((y / y.size(1)).mean((2, 3)))


class ScaledAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.p, self.q, self.k, self.v, self.o = (nn.Linear(3, 8), nn.Linear(8, 8), nn.Linear(8, 8),
                                                  nn.Linear(8, 8), nn.Linear(8, 4))

    def forward(self, x):
        t = self.p(x.flatten(2).transpose(1, 2))
        q, k, v = self.q(t), self.k(t), self.v(t)
        a = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(-1)
        return self.o((a @ v).mean(1))


class TransposedTie(nn.Module):
    def __init__(self):
        super().__init__()
        self.p, self.enc = nn.Linear(3, 6), nn.Linear(6, 8)

    def forward(self, x):
        z = self.p(x.mean((2, 3)))
        return F.linear(torch.relu(self.enc(z)), self.enc.weight.t())


class TiedHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb, self.mid, self.head = nn.Embedding(10, 8), nn.Linear(8, 8), nn.Linear(8, 10, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, ids):
        return self.head(torch.relu(self.mid(self.emb(ids))))


class ChunkCat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = cbr(), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.b(torch.cat(self.a(x).chunk(2, 1), 1)).mean((2, 3))


class UnbindStack(ChunkCat):
    def forward(self, x):
        return self.b(torch.stack(self.a(x).unbind(1), 1)).mean((2, 3))


class LayerNormByShape(nn.Module):
    def __init__(self):
        super().__init__()
        self.p, self.a, self.b = nn.Linear(3, 12), nn.Linear(12, 8), nn.Linear(8, 4)

    def forward(self, x):
        y = self.a(self.p(x.mean((2, 3))))
        return self.b(F.layer_norm(y, y.shape[1:]))


class OutputsWithNone(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.fc = cbr(), nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.a(x).mean((2, 3))), None, 3


class SharedInSequential(nn.Module):
    def __init__(self):
        super().__init__()
        c = nn.Conv2d(8, 8, 1)
        self.a, self.seq, self.fc = cbr(), nn.Sequential(c, nn.ReLU(), c), nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.seq(self.a(x)).mean((2, 3)))


class TensorAttribute(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.fc = cbr(), nn.Linear(8, 4)
        self.scale = torch.rand(1, 8, 1, 1, dtype=torch.float64) + 0.5  # neither parameter nor buffer

    def forward(self, x):
        return self.fc((self.a(x) * self.scale).mean((2, 3)))


class ScalarInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.fc = cbr(), nn.Linear(8, 4)

    def forward(self, x, t):
        return self.fc(self.a(x).mean((2, 3)) * t)


def _frozen_bn():
    from torchvision.ops import FrozenBatchNorm2d
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), FrozenBatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


def _timm_norm_act():
    from timm.layers import BatchNormAct2d, GroupNormAct
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), BatchNormAct2d(8), nn.Conv2d(8, 8, 1), GroupNormAct(8, 4),
                         nn.Conv2d(8, 8, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


def _mha():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.p, self.att, self.fc = nn.Linear(3, 8), nn.MultiheadAttention(8, 2, batch_first=True), nn.Linear(8, 4)

        def forward(self, x):
            t = self.p(x.flatten(2).transpose(1, 2))
            return self.fc(self.att(t, t, t)[0].mean(1))
    return M()


# (factory, inputs, must prune something)
REPRODUCERS = {
    "kwarg_batch_norm": (KwBatchNorm, X, True), "clamp_tensor_bound": (ClampByParam, X, True),
    "size_used_as_value": (SizeAsValue, X, False), "attention_scale": (ScaledAttention, X, True),
    "transposed_tie": (TransposedTie, X, True), "tied_head": (TiedHead, None, True),
    "cat_of_chunk_node": (ChunkCat, X, True), "stack_of_unbind_node": (UnbindStack, X, False),
    "layer_norm_by_shape": (LayerNormByShape, X, True), "outputs_with_none": (OutputsWithNone, X, True),
    "module_twice_in_sequential": (SharedInSequential, X, True), "plain_tensor_attribute": (TensorAttribute, X, True),
    "frozen_batch_norm": (_frozen_bn, X, True), "timm_norm_act": (_timm_norm_act, X, True),
    "multihead_attention": (_mha, X, True), "scalar_example_input": (ScalarInput, (X, 2.0), True),
}


@pytest.mark.parametrize("name", list(REPRODUCERS))
def test_reproducer_prunes_exactly_or_keeps_channels(name):
    make, inputs, prunes = REPRODUCERS[name]
    torch.manual_seed(0)
    model = randomize(make().double().eval())
    if inputs is None:
        inputs = torch.randint(0, 10, (2, 5), generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruned = surgery.prune(model, inputs, ratio=0.5)
    check = pruned.surgery_verification
    if prunes:
        assert count_params(pruned) < count_params(model)
        assert check.exact or all("normalisation" in u for u in check.unchecked), str(check)
    else:  # the engine could not follow the op: it keeps those channels (never a wrong model)
        assert check.exact or check.unchecked == ["nothing was removed"]


def test_tied_weights_stay_tied():
    model = randomize(TiedHead().double().eval())
    ids = torch.randint(0, 10, (2, 5), generator=torch.Generator().manual_seed(0))
    pruned = surgery.prune(model, ids, ratio=0.5)
    assert pruned.head.weight is pruned.emb.weight and pruned.emb.embedding_dim == 4


def test_squeeze_after_a_group_shrinks_to_one_channel_is_exact():
    model = randomize(nn.Sequential(nn.Conv2d(3, 2, 1), nn.AdaptiveAvgPool2d(1), nn.Conv2d(2, 4, 1)).double().eval())

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.m, self.fc = model, nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(self.m(x).squeeze(-1).squeeze(-1))

    net = Net().double().eval()
    pruned = surgery.prune(net, X, ratio=0.6)  # 2 -> 1 channel: squeeze(-1) must not drop the channel dim
    assert pruned.surgery_verification.exact and pruned.m[0].out_channels == 1
    assert max_error(net, pruned, X) < 1e-10


# ---------------------------------------------------------------- wrapped models and leftovers
def _small():
    return nn.Sequential(cbr(), nn.ReLU(), nn.Conv2d(8, 8, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


@pytest.mark.parametrize("wrap, fix", [(nn.DataParallel, "model.module"),
                                       (lambda m: torch.jit.script(m), "before scripting"),
                                       (lambda m: torch.compile(m), "model._orig_mod")])
def test_wrapped_models_say_what_to_pass_instead(wrap, fix):
    with pytest.raises(TypeError, match=fix.replace(".", r"\.").replace("(", r"\(")):
        surgery.prune(wrap(_small()), X.float(), ratio=0.5)


def test_parametrizations_and_masks_are_refused_with_the_fix():
    m = _small()
    torch.nn.utils.parametrizations.weight_norm(m[2])
    with pytest.raises(ValueError, match="remove_parametrizations"):
        surgery.prune(m, X.float(), ratio=0.5)
    m = _small()
    surgery.sparsity.sparsify(m, 0.5, "weight")
    with pytest.raises(ValueError, match="make_permanent"):
        surgery.prune(m, X.float(), ratio=0.5)


# ---------------------------------------------------------------- input validation
def test_bad_inputs_raise_named_errors_and_change_nothing():
    m = _small().double()
    before = _state(m)
    with pytest.raises(ValueError, match=r"keys \['y'\]"):
        surgery.prune(m, {"input": X, "y": X}, ratio=0.5)
    with pytest.raises(TypeError, match="boolean mask"):
        surgery.Surgeon(m, X).remove_channels("0.0", torch.tensor([True, False] * 4))
    with pytest.raises(ValueError, match="max_batches"):
        surgery.prune(m, X, ratio=0.5, criterion="taylor", data=[(X, torch.zeros(2, dtype=torch.long))],
                      max_batches=-1)
    with pytest.raises(TypeError, match="criteria.Criterion"):
        surgery.prune(m, X, ratio=0.5, criterion=object())
    assert _same_state(before, _state(m))


def test_ignoring_the_whole_model_prunes_nothing():
    m = _small().double()
    pruned = surgery.prune(m, X, ratio=0.5, ignored_layers=[m])
    assert count_params(pruned) == count_params(m)


def test_a_single_ignored_layer_name_is_one_layer_not_its_letters():
    m = _small().double()
    by_name = surgery.prune(m, X, ratio=0.5, ignored_layers="0.0")
    assert by_name[0][0].out_channels == 8 and by_name[2].out_channels == 4
    by_module = surgery.Pruner(m, X, ratio=0.5, ignored_layers=m[0][0]).step()
    assert by_module[0][0].out_channels == 8


def test_load_refuses_bad_files_and_leaves_the_model(tmp_path):
    model = _small()
    small = surgery.prune(model, X.float(), ratio=0.5)
    good = tmp_path / "good.pt"
    surgery.save(small, good)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="not a file written by surgery.save"):
        surgery.load(empty, model=_small())
    data = torch.load(good, weights_only=True)
    for key, value, match in (("version", 99, "format version 99"), ("history", "{not json", "not JSON"),
                              ("state_dict", None, "malformed")):
        bad = dict(data, **{key: value})
        path = tmp_path / f"bad_{key}.pt"
        torch.save(bad, path)
        with pytest.raises(ValueError, match=match):
            surgery.load(path, model=_small())
    victim = _small()
    before = _state(victim)
    wrong = dict(data, state_dict={k: v[:1] if v.dim() else v for k, v in data["state_dict"].items()})
    torch.save(wrong, tmp_path / "wrong.pt")
    with pytest.raises(ValueError, match="do not fit"):
        surgery.load(tmp_path / "wrong.pt", model=victim)
    assert _same_state(before, _state(victim)) and victim[0][0].out_channels == 8


def test_a_plan_asking_for_a_huge_input_is_refused():
    plan = surgery.Plan.from_json(surgery.prune(_small(), X.float(), ratio=0.5).surgery_history[-1])
    plan.inputs = [{"shape": [100000, 3, 1024, 1024], "dtype": "float32"}]
    with pytest.raises(ValueError, match="elements"):
        surgery.apply_plan(_small(), plan)


def test_load_without_model_builds_the_saved_architecture_or_says_how(tmp_path):
    from surgery.models import create
    torch.manual_seed(0)
    model = create("resnet20", num_classes=7)
    x = torch.randn(2, 3, 32, 32)
    small = surgery.prune(model, x, ratio=0.5)
    surgery.save(small, tmp_path / "with.pt", architecture={"name": "resnet20", "num_classes": 7})
    back = surgery.load(tmp_path / "with.pt")
    assert type(back) is type(small) and torch.equal(back.eval()(x), small.eval()(x))
    surgery.save(small, tmp_path / "without.pt")
    with pytest.raises(TypeError, match="architecture='resnet20'"):
        surgery.load(tmp_path / "without.pt")
    with pytest.raises(TypeError, match="architecture must be"):
        surgery.save(small, tmp_path / "bad.pt", architecture={"num_classes": 7})
    with pytest.raises(ValueError, match="unknown model"):
        surgery.save(small, tmp_path / "typo.pt", architecture="resnet21") or surgery.load(tmp_path / "typo.pt")
