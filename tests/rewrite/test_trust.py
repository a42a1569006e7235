"""What a hostile file or a careless call must not get past: files that name code to run,
verification that would check nothing, in-place edits that would leave a broken object,
configs that would hang or fail after training. Each test failed before its fix."""
from __future__ import annotations

import os
import warnings
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

import surgery
from surgery.core.architectures import build_stored
from surgery.core.errors import UntrustedSpecError

X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def _small():
    torch.manual_seed(0)
    return nn.Sequential(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)), nn.ReLU(),
                         nn.Conv2d(8, 4, 3, padding=1))


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _equal_state(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- load runs no named code
def _saved_with_spec(tmp_path, spec):
    path = tmp_path / "m.pt"
    surgery.save(surgery.prune(_small(), X, ratio=0.5), path, architecture=spec)
    return path


@pytest.mark.parametrize("spec", [{"name": "os:system", "command": "touch PWNED"},
                                  {"name": "subprocess:check_call", "args": ["touch", "PWNED"]},
                                  {"name": "evil.py:build"}])
def test_load_never_calls_a_function_the_file_names(tmp_path, monkeypatch, spec):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "evil.py").write_text("import pathlib\ndef build():\n    pathlib.Path('PWNED').touch()\n")
    path = _saved_with_spec(tmp_path, spec)
    with pytest.raises(UntrustedSpecError, match="builders="):
        surgery.load(path)
    assert not (tmp_path / "PWNED").exists()


def test_load_builds_a_function_spec_with_the_function_the_user_passes(tmp_path):
    path = _saved_with_spec(tmp_path, {"name": "my_pkg.nets:small"})
    back = surgery.load(path, builders={"my_pkg.nets:small": _small})
    assert back[0][0].out_channels == 4


def test_stored_specs_may_not_name_files_to_read():
    with pytest.raises(UntrustedSpecError, match="checkpoint_path"):
        build_stored("timm:resnet18", {"checkpoint_path": "/etc/passwd"})
    assert build_stored("resnet20", {"num_classes": 3}).fc.out_features == 3


def test_report_of_a_run_never_imports_what_its_config_names(tmp_path):
    """`surgery report RUN` on a run folder whose config names module:function refuses
    before importing it; --builder trusts it explicitly."""
    run = tmp_path / "run"
    run.mkdir()
    (tmp_path / "evilmod.py").write_text("import pathlib\npathlib.Path('PWNED').touch()\ndef build(**k):\n    pass\n")
    (run / "metrics.json").write_text('{"input_shape": [3, 8, 8]}')
    (run / "config.yaml").write_text("model: {name: 'evilmod:build'}\ndata: {name: digits}\n")
    surgery.save(surgery.prune(_small(), X, ratio=0.5), run / "model.pt", architecture="evilmod:build")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    done = subprocess.run([sys.executable, "-m", "surgery", "report", str(run)], cwd=tmp_path, env=env,
                          capture_output=True, text=True)
    assert done.returncode != 0 and "--builder evilmod:build" in done.stderr
    assert not (tmp_path / "PWNED").exists()


# --------------------------------------------------------------------------- a failed load changes nothing
def test_a_failed_load_into_a_model_leaves_its_weights(tmp_path):
    path = tmp_path / "m.pt"
    surgery.save(surgery.prune(_small(), X, ratio=0.5), path)
    data = torch.load(path, weights_only=True)
    state = dict(data["state_dict"])
    state["2.weight"] = state["2.weight"][:, :1]  # one tensor of the wrong shape, the rest fit
    torch.save(dict(data, state_dict=state), tmp_path / "bad.pt")
    victim = _small()
    with torch.no_grad():
        victim[2].bias.fill_(7.0)  # a weight the file would overwrite if loading went ahead
    before = _state(victim)
    with pytest.raises(ValueError, match="2.weight"):
        surgery.load(tmp_path / "bad.pt", model=victim)
    assert _equal_state(before, _state(victim)) and victim[0][0].out_channels == 8


# --------------------------------------------------------------------------- verification covers every output
class TwoHeads(nn.Module):
    """Two outputs: a conv head and a head through LayerNorm over the same channels."""

    def __init__(self, scale_b=1.0, norm=True):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.a = nn.Conv2d(8, 4, 1)
        self.b = nn.Conv2d(8, 4, 1)
        self.norm = nn.GroupNorm(1, 8) if norm else nn.Identity()
        self.scale_b = scale_b

    def forward(self, x):
        h = self.stem(x)
        return self.a(h), self.b(self.norm(h)) * self.scale_b


def _tampered(model, x):
    """(reference, pruned, graph, removed) with the pruned first head off by 1% of its scale."""
    from surgery.rewrite.rebuild import rewrite
    from surgery.rewrite.verify import masked_reference
    from surgery.select.selection import select_units
    graph = surgery.trace(model, x)
    group = next(g for g in graph.groups if g.prunable and g.size == 8)
    removed = select_units(graph, group, surgery.criteria.get("l1"), 4)
    reference = masked_reference(model, graph, removed, torch.float64)
    pruned = rewrite(model, graph, removed)
    with torch.no_grad():
        scale = float(pruned.double()(x.double())[0].abs().max())
        pruned.a.bias += 0.01 * scale
    return reference, pruned.float(), graph, removed


def test_a_large_second_output_does_not_hide_a_wrong_first_one():
    from surgery.core.errors import VerificationError
    from surgery.rewrite.verify import verify
    model = TwoHeads(scale_b=1e6, norm=False).eval()
    with pytest.raises(VerificationError, match="'a'"):
        verify(*_tampered(model, X), X)


def test_outputs_a_layernorm_does_not_feed_are_still_compared():
    from surgery.core.errors import VerificationError
    from surgery.rewrite.verify import verify
    model = TwoHeads().eval()
    with pytest.raises(VerificationError, match="'a'"):
        verify(*_tampered(model, X), X)
    with pytest.warns(UserWarning, match="normalisations over channels"):
        pruned = surgery.prune(model, X, ratio=0.5)
    v = pruned.surgery_verification
    assert not v.exact and v.max_error is not None and v.max_error < 1e-6
    assert v.compared == "outputs [0] of 2" and "GroupNorm" in " ".join(v.unchecked)
    assert str(v).startswith("partly verified")


@pytest.mark.parametrize("shape", [(0, 3, 8, 8), (2, 3, 0, 8)])
def test_empty_example_inputs_are_refused(shape):
    with pytest.raises(ValueError, match=r"example_inputs\[0\] is empty"):
        surgery.prune(_small(), torch.randn(*shape), ratio=0.5)
    with pytest.raises(ValueError, match="empty"):
        surgery.Surgeon(_small(), {"input": torch.randn(*shape)})


# --------------------------------------------------------------------------- code under `if self.training:`
class TrainOnlyHead(nn.Module):
    """An auxiliary head that runs only in training (GoogLeNet-style), or a slice taken only
    in training: neither is in a graph traced in eval mode."""

    def __init__(self, kind="aux"):
        super().__init__()
        self.kind = kind
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Conv2d(8, 4, 1)
        self.aux = nn.Conv2d(8, 4, 1)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        h = self.stem(x)
        out = self.head(self.drop(h))
        if self.training and self.kind == "aux":
            return out, self.aux(h)
        if self.training:
            return out + h[:, :4].sum(1, keepdim=True)
        return out


def test_a_branch_taken_only_in_training_is_checked():
    for kind in ("aux", "slice"):
        model = TrainOnlyHead(kind).eval()
        before = _state(model)
        with pytest.raises(surgery.VerificationError, match="train mode") as err:
            surgery.prune(model, X, ratio=0.5, inplace=True)
        if "fails" in str(err.value):  # the layer that fails is named (issue 31, item 5)
            assert "in module 'aux'" in str(err.value), str(err.value)
        assert _equal_state(before, _state(model)) and model.stem[0].out_channels == 8


def test_traced_in_train_mode_the_training_branch_prunes_and_verifies_in_both_modes():
    model = TrainOnlyHead("aux").train()
    pruned = surgery.prune(model, X, ratio=0.5)
    assert pruned.aux.in_channels == 4 and pruned.surgery_verification.train == "train mode compared too"
    bn = pruned.stem[1]  # verification ran it in train mode: no running statistic moved
    assert torch.equal(bn.running_mean, torch.zeros(4)) and int(bn.num_batches_tracked) == 0
    assert pruned.training and [t.shape[1] for t in pruned(X)] == [4, 4]


# --------------------------------------------------------------------------- in place means this object
class HardCodedFlatten(nn.Module):
    """A forward with a literal size (512 = 8 channels x 8 x 8) that pruning must change."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.bn, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Linear(512, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).view(x.shape[0], 512))


def test_in_place_pruning_that_needs_a_new_graph_module_is_refused_and_changes_nothing():
    model = HardCodedFlatten().eval()
    before = _state(model)
    with pytest.raises(surgery.InPlaceError, match="inplace=False"):
        surgery.prune(model, X, ratio=0.5, inplace=True)
    assert _equal_state(before, _state(model)) and model(X).shape == (2, 4)
    with pytest.warns(UserWarning, match="GraphModule"):
        pruned = surgery.prune(model, X, ratio=0.5)
    assert isinstance(pruned, torch.fx.GraphModule) and pruned.conv.out_channels == 4 and model.conv.out_channels == 8
    surgeon = surgery.Surgeon(model, X)
    with pytest.raises(surgery.InPlaceError, match="Surgeon edits your object"):
        surgeon.prune_layer(model.conv, 0.5)
    assert _equal_state(before, _state(model)) and model(X).shape == (2, 4)


def test_load_into_a_model_whose_plan_patches_literals_returns_the_new_module(tmp_path):
    with pytest.warns(UserWarning, match="GraphModule"):
        pruned = surgery.prune(HardCodedFlatten().eval(), X, ratio=0.5)
    surgery.save(pruned, tmp_path / "m.pt")
    fresh = HardCodedFlatten().eval()
    before = _state(fresh)
    back = surgery.load(tmp_path / "m.pt", model=fresh)
    assert torch.equal(back.eval()(X), pruned(X)) and _equal_state(before, _state(fresh))


def test_surgeon_restores_the_layer_when_tracing_the_pruned_model_fails(monkeypatch):
    model = _small().eval()
    surgeon = surgery.Surgeon(model, X)
    before = _state(model)

    def broken_trace(*args, **kwargs):
        raise RuntimeError("trace failed")
    monkeypatch.setattr("surgery.surgeon.trace", broken_trace)
    with pytest.raises(RuntimeError, match="trace failed"):
        surgeon.prune_layer(model[0][0], 0.5)
    assert _equal_state(before, _state(model)) and model[0][0].out_channels == 8
    assert not getattr(model, "surgery_history", [])
    monkeypatch.undo()
    surgeon.prune_layer(model[0][0], 0.5)  # the Surgeon still holds the graph of the unpruned model
    assert model[0][0].out_channels == 4 and len(model.surgery_history) == 1


# --------------------------------------------------------------------------- configs checked before any epoch
@pytest.mark.parametrize("override, match", [
    ("finetune.temperature=0", "finetune.temperature"), ("train.lr=.nan", "train.lr"),
    ("train.lr=.inf", "train.lr"), ("eval.batch_sizes=[0]", "eval.batch_sizes"), ("eval.batch_sizes=[]", "eval.batch_sizes"),
    ("data.image_size=0", "data.image_size"), ("train.epochs=-1", "train.epochs"),
    ("finetune.patience=-2", "finetune.patience"), ("finetune.alpha=1.5", "finetune.alpha"),
    ("prune.criterion=l3", "prune.criterion"), ("prune.criterion_options={mode: nope}", "prune.criterion"),
    ("prune.normalize=median", "normalize"), ("prune.iterative_steps=0", "iterative_steps"),
    ("prune.attention=rows", "attention"), ("prune.tracer=jit", "tracer"), ("prune.skip_blocks=[-1,0]", "skip_blocks"),
    ("prune.max_batches=0", "prune.max_batches"), ("eval.repeats=0", "eval.repeats")])
def test_every_bad_value_is_refused_when_the_config_is_resolved(override, match):
    from surgery.pipeline import ConfigError, resolve
    with pytest.raises(ConfigError, match=match):
        resolve(env={}, overrides=[override])


def test_a_bad_prune_section_stops_the_run_before_training(tmp_path):
    from surgery.pipeline import ConfigError, run
    from surgery.pipeline.config import RunConfig
    cfg = {"prune": {"criterion": "no-such-criterion"}, "out": str(tmp_path / "run")}
    with pytest.raises(ConfigError, match="prune.criterion"):
        run(cfg)
    bad = RunConfig()
    bad.train.lr = float("nan")  # a RunConfig built in Python is checked too
    with pytest.raises(ConfigError, match="train.lr"):
        run(bad)
    assert not (tmp_path / "run").exists()


def test_a_yaml_alias_bomb_is_refused_quickly(tmp_path):
    from surgery.pipeline import ConfigError, resolve
    lines = ["model:", "  kwargs:", "    a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]  # free-form keys: no key check
    lines += [f"    a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match="aliases expand"):
        resolve(bomb, env={})
    with pytest.raises(ConfigError, match="aliases expand"):
        resolve(env={}, overrides=[f"model.kwargs={_bomb_flow(6)}"])
    ok = tmp_path / "ok.yaml"
    ok.write_text("train: &t {epochs: 1, lr: 0.01}\nfinetune: *t\n")  # small aliases still work
    assert resolve(ok, env={}).finetune.epochs == 1


def _bomb_flow(levels):
    """A one-line YAML alias bomb: 10**levels values."""
    text = "&l0 [0,0,0,0,0,0,0,0,0,0]"
    for i in range(1, levels + 1):
        text = f"[{text}, " + ", ".join([f"*l{i - 1}"] * 9) + "]"
        text = f"&l{i} " + text
    return "{x: " + text + "}"


# --------------------------------------------------------------------------- what tracing leaves behind
class Detect(nn.Module):
    """Stores anchors on itself in forward, as Ultralytics' Detect head does."""

    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, 4, 1)

    def forward(self, x):
        self.anchors = torch.arange(x.shape[-1], dtype=x.dtype)  # under a tracer: a proxy or a fake tensor
        self.shape = x.shape
        return self.conv(x) + self.anchors


class C2f(nn.Module):
    """Ultralytics' C2f: ``forward`` chunks, ``forward_split`` (never traced) splits by ``self.c``."""

    def __init__(self, c1, c2):
        super().__init__()
        self.c = c2 // 2
        self.cv1 = nn.Sequential(nn.Conv2d(c1, 2 * self.c, 1), nn.BatchNorm2d(2 * self.c), nn.SiLU())
        self.m = nn.Sequential(nn.Conv2d(self.c, self.c, 3, padding=1), nn.BatchNorm2d(self.c), nn.SiLU())
        self.cv2 = nn.Conv2d(3 * self.c, c2, 1)

    def forward(self, x):
        a, b = self.cv1(x).chunk(2, 1)
        y = [a, b]
        y.append(self.m(y[-1]))
        return self.cv2(torch.cat(y, 1))

    def forward_split(self, x):
        y = list(self.cv1(x).split((self.c, self.c), 1))
        y.append(self.m(y[-1]))
        return self.cv2(torch.cat(y, 1))


class Yolo(nn.Module):
    def __init__(self, data_dependent=True):
        super().__init__()
        self.data_dependent = data_dependent
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.SiLU())
        self.c2f = C2f(8, 16)
        self.detect = Detect(16)

    def forward(self, x):
        if self.data_dependent and x.shape[-1] < 4:  # fx cannot trace this; torch.export can
            raise ValueError("images must be at least 4 pixels wide")
        return self.detect(self.c2f(self.stem(x)))


@pytest.mark.parametrize("tracer", ["auto", "fx"])
def test_tracing_leaves_no_proxy_or_fake_tensor_on_the_model(tracer):
    model = Yolo(data_dependent=tracer == "auto").eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = surgery.trace(model, X, tracer=tracer)
    assert graph.front == ("export" if tracer == "auto" else "fx")
    assert "anchors" not in vars(model.detect) and "shape" not in vars(model.detect)
    assert model(X).shape == (2, 4, 8, 8)  # a fake tensor left on the model would fail here


@pytest.mark.parametrize("tracer", ["auto", "fx"])
def test_int_attributes_used_as_sizes_on_untraced_paths_follow(tracer):
    model = Yolo(data_dependent=tracer == "auto").eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        small = surgery.prune(model, X, ratio=0.5, tracer=tracer)
    h = small.stem(X)
    assert small.c2f.c == small.c2f.m[0].in_channels < 8
    assert torch.allclose(small.c2f.forward_split(h), small.c2f(h))


def test_leaf_modules_are_black_boxes_on_the_export_front_too():
    class Gate(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 1)

        def forward(self, x):
            return self.a(x) * torch.sigmoid(self.b(x)), x

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8))
            self.gate, self.mid, self.head = Gate(), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 4, 1)

        def forward(self, x):
            if x.shape[-1] > 4:
                x = self.stem(x)
            y, z = self.gate(x)
            return self.head(self.mid(y) + z)

    model = Net().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        free = surgery.prune(model, X, ratio=0.5)
        boxed = surgery.prune(model, X, ratio=0.5, leaf_modules=[Gate])
        by_name = surgery.prune(model, X, ratio=0.5, leaf_modules=["gate"])
    assert free.gate.a.out_channels == 4 and free.surgery_history
    for small in (boxed, by_name):  # everything touching the gate keeps its channels
        assert (small.stem[0].out_channels, small.gate.a.out_channels, small.mid.out_channels) == (8, 8, 8)
    with pytest.raises(ValueError, match="not submodules"):
        surgery.trace(model, X, leaf_modules=["gaet"], tracer="export")


class SizedHeads(nn.Module):
    """Attention whose head width its own code computes from the input's width (timm's NesT)."""

    def __init__(self, c: int = 8, heads: int = 2):
        super().__init__()
        self.heads = heads
        self.qkv, self.proj = nn.Linear(c, 3 * c), nn.Linear(c, c)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, -1))


class SizedNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp, self.att, self.out = nn.Linear(4, 8), SizedHeads(), nn.Linear(8, 3)
        self.mlp = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8))

    def forward(self, x):
        h = self.inp(x)
        h = h + self.att(h)
        return self.out(h + self.mlp(h))


@pytest.mark.parametrize("tracer", ["export", "run"])
def test_code_that_computes_sizes_the_graph_holds_as_constants_keeps_its_channels(tracer):
    """torch.export specialises ``c // self.heads`` to a literal: a plan that prunes ``c`` breaks
    the module's own code. The step is planned again with that class's channels kept, and the
    rest pruned (this raised a VerificationError before)."""
    torch.manual_seed(0)
    model = SizedNet().double()
    before = _state(model)
    x = torch.randn(2, 5, 4, dtype=torch.float64)
    with pytest.warns(UserWarning, match=r"fails to run in 'att' \(SizedHeads.*kept"):
        small = surgery.prune(model, x, ratio=0.5, tracer=tracer)
    assert small.surgery_verification.exact
    assert (small.inp.out_features, small.att.qkv.out_features, small.mlp[0].out_features) == (8, 24, 8)
    assert _equal_state(model.state_dict(), before)


def test_keeping_code_whole_is_bounded(monkeypatch):
    monkeypatch.setattr(surgery.pruner, "_MAX_KEPT_CODE", 0)
    x = torch.randn(2, 5, 4)
    with pytest.raises(surgery.VerificationError, match="fails on the example inputs in module 'att'"):
        surgery.prune(SizedNet(), x, ratio=0.5, tracer="export")


def test_code_that_fails_after_an_fx_rewrite_is_a_bug_and_raised(monkeypatch):
    """torch.fx sees sizes computed at run time, so a pruned model that does not run is reported."""
    from surgery.rewrite import verify
    calls = []

    def fails(*args, **kwargs):
        calls.append(1)
        raise verify.FailsToRun("the pruned model fails on the example inputs in module 'att'", "att")

    monkeypatch.setattr(surgery.pruner, "checked_rewrite", fails)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no "kept, planned again" warning either
        with pytest.raises(surgery.VerificationError, match="'att'"):
            surgery.prune(SizedNet(), torch.randn(2, 5, 4), ratio=0.5, tracer="fx")
    assert calls == [1]  # raised at once, not planned again


def test_the_summary_of_many_unchecked_norms_is_short_and_the_list_complete():
    from surgery.rewrite.verify import Verification
    v = Verification(exact=False, unchecked=[f"norm {i}" for i in range(25)])
    assert "norm 2" in str(v) and "norm 3" not in str(v) and "22 more" in str(v)
    assert len(v.unchecked) == 25


def test_trace_warnings_point_at_the_callers_line():
    """Warnings name the user's file on every entry path (trace, prune, Pruner), not the library's."""
    class Opaque(torch.nn.Module):
        def forward(self, x):
            return torch.special.erfcx(x)

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), Opaque(), torch.nn.Conv2d(4, 4, 1))
    x = torch.randn(1, 3, 8, 8)
    for call in (lambda: surgery.trace(model, x), lambda: surgery.prune(model, x, ratio=0.5),
                 lambda: surgery.Pruner(model, x, ratio=0.5).step()):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            call()
        rule_warnings = [w for w in caught if "no channel rule" in str(w.message)]
        assert rule_warnings and all(w.filename == __file__ for w in rule_warnings), \
            [(w.filename, str(w.message)[:60]) for w in caught]
