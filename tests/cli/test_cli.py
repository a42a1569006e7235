"""The command line as a user runs it: errors, saving, user models, seeding, data criteria."""
import re

import pytest
import torch

import surgery
from surgery.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("argv, message", [(["prune", "resnet20", "--ratio", "1.5"], "ratio must be in"),
                                           (["prune", "resnet20", "--criterion", "foo"], "unknown criterion 'foo'"),
                                           (["prune", "nope"], "unknown model 'nope'"),
                                           (["prune", "no_such_module:build"], "cannot import")])
def test_errors_print_one_line_and_exit_2(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_prune_saves_a_model_that_loads_back_and_says_what_ratio_means(capsys, tmp_path):
    path = tmp_path / "small.pt"
    code, out, _ = run(capsys, "prune", "resnet20", "--ratio", "0.5", "--output", str(path), "--seed", "3")
    assert code == 0 and "removed 50% of each group's channels" in out and "verified" in out
    back = surgery.load(path)  # the file says how to build the architecture
    after = int(re.search(r"params\s+[\d,]+\s+([\d,]+)", out).group(1).replace(",", ""))
    assert sum(p.numel() for p in back.parameters()) == after


def test_runs_are_seeded(capsys, tmp_path):
    for name in ("a.pt", "b.pt"):
        assert run(capsys, "prune", "resnet20", "--output", str(tmp_path / name))[0] == 0
    a, b = (torch.load(tmp_path / n, weights_only=True)["state_dict"] for n in ("a.pt", "b.pt"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_user_model_from_a_file_with_weights(capsys, tmp_path):
    src = tmp_path / "net.py"
    src.write_text("import torch.nn as nn\n"
                   "def build(num_classes=10):\n"
                   "    return nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(),\n"
                   "                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes))\n")
    import importlib.util
    spec = importlib.util.spec_from_file_location("net", src)
    net = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(net)
    torch.save(net.build().state_dict(), tmp_path / "w.pt")
    code, out, _ = run(capsys, "prune", f"{src}:build", "--weights", str(tmp_path / "w.pt"), "--global",
                       "--iterative-steps", "2")
    assert code == 0 and "ranked globally" in out


def test_data_criterion_from_the_command_line(capsys):
    code, out, err = run(capsys, "prune", "resnet20", "--criterion", "taylor", "--data", "digits", "--max-batches", "2")
    assert code == 0, err
    code, _, err = run(capsys, "prune", "resnet20", "--criterion", "taylor")
    assert code == 2 and "from data: add --data digits" in err and "data=<" not in err


def test_target_flops_from_the_command_line(capsys):
    code, out, _ = run(capsys, "prune", "resnet20", "--target-flops", "0.5")
    kept = float(re.search(r"FLOPs\s+[\d,]+\s+[\d,]+\s+([\d.]+)%", out).group(1))
    assert code == 0 and abs(kept - 50) < 2.5


def test_python_dash_m_surgery_and_version():
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", "surgery", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("torch-surgery ")
    helptext = subprocess.run([sys.executable, "-m", "surgery", "--help"], capture_output=True, text=True).stdout
    assert "``" not in helptext and "Examples:" in helptext


def test_whole_heads_and_skipped_blocks_from_the_command_line(capsys, tmp_path):
    pytest.importorskip("timm")
    path = tmp_path / "vit.pt"
    code, out, _ = run(capsys, "prune", "timm:vit_tiny_patch16_224", "--input-shape", "1,3,224,224",
                       "--attention", "heads", "--skip-blocks", "1,1", "--ignore", "patch_embed", "--output", str(path))
    assert code == 0 and "verified" in out
    blocks = surgery.load(path).blocks
    heads = [b.attn.num_heads for b in blocks]
    assert heads[0] == heads[-1] == 3 and set(heads[1:-1]) == {2}  # floor(0.5 * 3) heads go
    with pytest.raises(SystemExit) as stop:  # argparse rejects it with usage
        main(["prune", "resnet20", "--skip-blocks", "x"])
    assert stop.value.code == 2 and "FIRST,LAST" in capsys.readouterr().err


def test_prune_flags_are_the_prune_config_fields_one_to_one():
    import argparse
    import dataclasses

    from surgery.cli import CHECKPOINT_DEFAULTS, _parser
    from surgery.core.config import PruneConfig
    prune = _parser()._subparsers._group_actions[0].choices["prune"]
    generated = {a.dest for a in prune._actions if a.default is argparse.SUPPRESS and a.dest != "help"
                 and a.dest not in CHECKPOINT_DEFAULTS}  # those are the checkpoint-folder flags
    python_only = {f.name for f in dataclasses.fields(PruneConfig) if f.metadata["cli"] is None}
    assert generated == set(PruneConfig.fields()) - python_only
    assert python_only == {"inplace"}  # the command line always writes a new file
    for action in prune._actions:
        if action.dest in generated:
            assert PruneConfig.help(action.dest) in action.help


def test_a_library_refusal_is_one_line_and_a_bug_is_a_traceback(capsys, monkeypatch):
    import surgery.cli
    code, _, err = run(capsys, "prune", "resnet20", "--ratios", "nope=0.5")
    assert code == 2 and "nope" in err and "Traceback" not in err

    def boom(*args, **kwargs):
        raise ZeroDivisionError("an internal bug")
    monkeypatch.setattr(surgery.cli, "_prune", boom)
    with pytest.raises(ZeroDivisionError):
        main(["prune", "resnet20"])


def test_repairs_from_the_command_line_need_data_and_run_with_it(capsys):
    code, _, err = run(capsys, "prune", "resnet20", "--recalibrate")
    assert code == 2 and "--data digits" in err
    code, out, err = run(capsys, "prune", "resnet20", "--recalibrate", "--reconstruct", "least_squares",
                         "--data", "digits", "--max-batches", "2")
    assert code == 0, err
    assert "verified" in out and "25.2%" in out
