"""What a hostile file or a careless call must not get past: files that name code to run,
verification that would check nothing, in-place edits that would leave a broken object,
configs that would hang or fail after training. Each test failed before its fix."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

import surgery
from surgery.architectures import UntrustedSpecError, build_stored

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
    from surgery.rewrite import rewrite
    from surgery.verify import masked_reference
    from surgery.selection import select_units
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
    from surgery.verify import VerificationError, verify
    model = TwoHeads(scale_b=1e6, norm=False).eval()
    with pytest.raises(VerificationError, match="'a'"):
        verify(*_tampered(model, X), X)


def test_outputs_a_layernorm_does_not_feed_are_still_compared():
    from surgery.verify import VerificationError, verify
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
        with pytest.raises(surgery.VerificationError, match="train mode"):
            surgery.prune(model, X, ratio=0.5, inplace=True)
        assert _equal_state(before, _state(model)) and model.stem[0].out_channels == 8


def test_traced_in_train_mode_the_training_branch_prunes_and_verifies_in_both_modes():
    model = TrainOnlyHead("aux").train()
    pruned = surgery.prune(model, X, ratio=0.5)
    assert pruned.aux.in_channels == 4 and pruned.surgery_verification.train == "train mode compared too"
    bn = pruned.stem[1]  # verification ran it in train mode: no running statistic moved
    assert torch.equal(bn.running_mean, torch.zeros(4)) and int(bn.num_batches_tracked) == 0
    assert pruned.training and [t.shape[1] for t in pruned(X)] == [4, 4]
