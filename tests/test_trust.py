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
