"""The pipeline as users run it: configuration layers, run folders, resume, eval-only,
presets, class subsets, DDP with two processes, sweeps, and the reports' numbers."""
import csv
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
import yaml

import surgery
from surgery import cli
from surgery.pipeline import ConfigError, resolve, run
from surgery.pipeline.data import load
from surgery.pipeline.config import DataSection
from support.runs import run_config

TINY = {"train": {"epochs": 2}, "finetune": {"epochs": 1}, "eval": {"repeats": 2, "warmup": 1,
                                                                      "batch_sizes": [1, 8]}}


def _tiny(out, **sections):
    return run_config(TINY, out, **sections)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "r"
    return run(_tiny(out))


def test_layers_later_wins_and_budget_keys_exclude_each_other(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("prune: {ratio: 0.2, criterion: fpgm}\nseed: 3\n")
    cfg = resolve(f, env={}, overrides=[])
    assert (cfg.prune.ratio, cfg.prune.target_flops, cfg.prune.criterion, cfg.seed) == (0.2, None, "fpgm", 3)
    cfg = resolve(f, preset="aggressive", env={})
    assert (cfg.prune.ratio, cfg.prune.target_flops, cfg.prune.criterion) == (None, 0.3, "fpgm")
    cfg = resolve(f, preset="aggressive", env={"SURGERY_PRUNE__RATIO": "0.6", "SURGERY_SEED": "5"})
    assert (cfg.prune.ratio, cfg.prune.target_flops, cfg.seed) == (0.6, None, 5)
    cfg = resolve(f, preset="aggressive", env={"SURGERY_PRUNE__RATIO": "0.6"}, overrides=["prune.ratio=0.4"])
    assert cfg.prune.ratio == 0.4
    assert resolve(env={}, overrides=["data.classes=[3,5,7]"]).data.classes == [3, 5, 7]


@pytest.mark.parametrize("override, match", [
    ("prune.ratoi=0.5", "unknown key 'prune.ratoi'; did you mean 'prune.ratio'"),
    ("prune.ratio=abc", "prune.ratio"), ("prune.ratio=1.5", r"prune.ratio must be in \[0, 1\)"),
    ("prune=0.5", "'prune' is a section"), ("ratio", "must look like section.key=value")])
def test_bad_config_is_rejected_naming_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        resolve(env={}, overrides=[override])


def test_cli_rejects_a_misspelled_key_with_exit_2(capsys):
    assert cli.main(["run", "prune.ratoi=0.5"]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'prune.ratoi'" in err and "'prune.ratio'" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as exit_:
        cli.main(["run", "--preset", "extreme"])
    assert exit_.value.code == 2


def test_config_show_prints_the_resolved_config(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("SURGERY_TRAIN__EPOCHS", "7")
    f = tmp_path / "c.yaml"
    f.write_text("finetune: {lr: 0.002}\n")
    assert cli.main(["config", "show", "--config", str(f), "--preset", "conservative", "prune.criterion=l2"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["train"]["epochs"] == 7 and shown["finetune"]["lr"] == 0.002
    assert shown["prune"]["target_flops"] == 0.7 and shown["prune"]["criterion"] == "l2"


def test_a_run_folder_holds_every_output(finished):
    out = finished.out
    for name in ("config.yaml", "metrics.json", "log.txt", "model.pt", "plan.json", "history.csv",
                 "report.html", "report.pdf", "insight.json"):
        assert (out / name).exists(), name
    m = json.loads((out / "metrics.json").read_text())
    for side in ("original", "pruned"):
        for key in ("accuracy", "per_class_accuracy", "params", "flops", "latency_ms", "size_bytes"):
            assert key in m[side], (side, key)
        assert set(m[side]["latency_ms"]) == {"1", "8"}
    assert m["pruned"]["flops"] < m["original"]["flops"] and len(m["pruned"]["per_class_accuracy"]) == 10
    back = surgery.load(out / "model.pt")
    assert sum(p.numel() for p in back.parameters()) == m["pruned"]["params"]
    rows = list(csv.DictReader(open(out / "history.csv")))
    assert [r["stage"] for r in rows] == ["train", "train", "finetune"]
    plans = json.loads((out / "plan.json").read_text())
    assert plans and plans[0]["remove"]


def test_reports_show_the_numbers_of_metrics_json_and_have_figures(finished):
    from surgery.reporting.render import fmt
    out = finished.out
    m = json.loads((out / "metrics.json").read_text())
    page = (out / "report.html").read_text()
    for side in ("original", "pruned"):
        assert fmt("accuracy", m[side]["accuracy"]) in page
        assert fmt("n", m[side]["params"]) in page and fmt("n", m[side]["flops"]) in page
        assert fmt("latency", m[side]["latency_ms"]["1"]["median_ms"]) in page
        assert fmt("size", m[side]["size_bytes"]) in page
    assert len(re.findall(r"src='data:image/png;base64,[A-Za-z0-9+/=]{1000,}'", page)) >= 5
    pdf = (out / "report.pdf").read_bytes()
    assert pdf.startswith(b"%PDF") and len(re.findall(rb"/Type\s*/Page[^s]", pdf)) >= 3
    md = (out / "report.md").read_text()
    assert fmt("n", m["pruned"]["params"]) in md and "## Risk notes" in md


def test_report_cli_rebuilds_the_reports(finished, capsys):
    (finished.out / "report.html").unlink()
    assert cli.main(["report", str(finished.out)]) == 0
    assert (finished.out / "report.html").exists()
    assert cli.main(["report", str(finished.out / "nope")]) == 2


def test_eval_only_measures_a_saved_model(finished, tmp_path):
    m = json.loads((finished.out / "metrics.json").read_text())
    result = run(_tiny(tmp_path / "e"), eval_only=True, model_path=finished.out / "model.pt")
    assert result.metrics["pruned"]["accuracy"] == pytest.approx(m["pruned"]["accuracy"])
    assert result.metrics["pruned"]["params"] == m["pruned"]["params"]


def test_resume_goes_on_from_the_last_epoch(tmp_path):
    out = tmp_path / "r"
    run(_tiny(out, finetune={"epochs": 0}, report=False, eval={"latency": False}))
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    cfg["train"]["epochs"] = 3  # as if the first run had been stopped after epoch 2 of 3
    (out / "config.yaml").write_text(yaml.safe_dump(cfg))
    for name in ("checkpoints/trained.pt", "checkpoints/original_metrics.json", "checkpoints/pruned.pt",
                 "metrics.json"):
        (out / name).unlink()
    assert cli.main(["run", "--resume", str(out)]) == 0
    assert "resumed after epoch 2" in (out / "log.txt").read_text()
    rows = list(csv.DictReader(open(out / "history.csv")))
    assert [int(r["epoch"]) for r in rows if r["stage"] == "train"] == [1, 2, 3]


def test_aggressive_preset_prunes_more_than_the_default(tmp_path):
    flops = {}
    for preset in (None, "aggressive"):
        cfg = resolve(preset=preset, env={}, overrides=["train.epochs=1", "finetune.epochs=0", "report=false",
                                                        "eval.latency=false", f"out={tmp_path / str(preset)}"])
        m = run(cfg).metrics
        flops[preset] = m["pruned"]["flops"] / m["original"]["flops"]
    assert flops["aggressive"] < flops[None] - 0.1
    assert flops[None] == pytest.approx(0.5, abs=0.02)


def test_a_class_subset_reduces_the_classifier(tmp_path):
    result = run(_tiny(tmp_path / "c", data={"classes": [3, 5, 7]}, prune={"criterion": "ocap", "ratio": 0.3},
                       report=False, eval={"latency": False}))
    assert result.model.classifier.out_features == 3
    assert len(result.metrics["pruned"]["per_class_accuracy"]) == 3
    assert result.metrics["class_names"] == ["3", "5", "7"]
    back = surgery.load(result.out / "model.pt")
    assert back.classifier.out_features == 3


def test_missing_dataset_names_the_expected_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        load(DataSection(name="cifar10", root=str(tmp_path)))
    with pytest.raises(ValueError, match="unknown dataset 'cifar11'"):
        load(DataSection(name="cifar11"))


def test_ddp_with_two_processes_gives_every_rank_the_same_model(tmp_path):
    torchrun = shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not on PATH")
    out = tmp_path / "ddp"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SURGERY_")}
    done = subprocess.run([torchrun, "--nproc_per_node=2", "-m", "surgery", "run", "train.epochs=1",
                           "finetune.epochs=1", "eval.latency=false", "report=false", "prune.criterion=taylor",
                           "prune.iterative_steps=2", "prune.epochs_between=1", "prune.ratio=0.5",
                           "--out", str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["pruned"]["flops"] < m["original"]["flops"] and len(m["steps"]) == 2
    assert [r["stage"] for r in csv.DictReader(open(out / "history.csv"))].count("between 1") == 1
    assert done.stdout.count("run folder:") == 1  # only rank 0 speaks


def test_sweep_writes_a_table_and_a_plot(tmp_path, capsys):
    assert cli.main(["sweep", "--criteria", "l1,fpgm", "--ratios", "0.3", "--seeds", "0,1", "--out",
                     str(tmp_path / "s"), "train.epochs=1", "finetune.epochs=1", "report=false"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "s" / "sweep.csv")))
    assert len(rows) == 4 and {r["criterion"] for r in rows} == {"l1", "fpgm"}
    md = (tmp_path / "s" / "sweep.md").read_text()
    assert "| l1 | 0.3 | 2 |" in md and "±" in md
    assert (tmp_path / "s" / "sweep.png").stat().st_size > 10_000


def test_training_options_early_stopping_and_distillation():
    from surgery.models import create
    from surgery.pipeline.config import TrainSection
    from surgery.pipeline.training import fit
    data = load(DataSection(), seed=0)
    torch.manual_seed(0)
    teacher, student = create("digits_cnn"), create("digits_cnn", width=8)
    cfg = TrainSection(epochs=4, patience=1, distill=True, label_smoothing=0.1, optimizer="adamw", lr=3e-3)
    lines = []
    rows = fit(student, data, cfg, stage="finetune", device=torch.device("cpu"), seed=0, batch_size=64,
               teacher=teacher, log=lines.append)
    assert 1 <= len(rows) <= 4 and all(a["lr"] > b["lr"] for a, b in zip(rows, rows[1:]))  # cosine decay
    best = max(range(len(rows)), key=lambda i: rows[i]["val_acc"])
    assert any(f"kept the weights of epoch {best + 1}" in line for line in lines)


def test_runs_are_deterministic_on_cpu(finished, tmp_path):
    again = run(_tiny(tmp_path / "again", report=False))
    first = json.loads((finished.out / "metrics.json").read_text())
    assert again.metrics["pruned"]["accuracy"] == first["pruned"]["accuracy"]
    assert again.metrics["accuracy_after_prune"] == first["accuracy_after_prune"]
    assert json.loads((again.out / "plan.json").read_text()) == json.loads((finished.out / "plan.json").read_text())
    a, b = surgery.load(again.out / "model.pt").state_dict(), surgery.load(finished.out / "model.pt").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_library_works_without_matplotlib(tmp_path):
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "import torch, surgery\n"
            "from surgery.models import create\n"
            "m, x = create('resnet20'), torch.randn(1, 3, 32, 32)\n"
            "r = surgery.report(m, surgery.prune(m, x, ratio=0.5), x)\n"
            "assert 'parameters' in r.to_markdown()\n"
            "try:\n"
            f"    r.to_html({str(tmp_path / 'r.html')!r})\n"
            "except ImportError as err:\n"
            "    assert '[report]' in str(err), err\n"
            "else:\n"
            "    raise SystemExit('no ImportError')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_an_image_folder_is_read_with_its_class_names(tmp_path):
    from PIL import Image
    for split, n in (("train", 6), ("val", 2)):
        for c in ("cat", "dog", "owl"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (40, 40), (i * 20, 60, 90)).save(tmp_path / split / c / f"{i}.png")
    d = load(DataSection(name="folder", root=str(tmp_path), image_size=32, classes=[0, 2], val_fraction=0.25), 0)
    assert d.class_names == ["cat", "owl"] and d.num_classes == 2 and d.input_shape == (3, 32, 32)
    assert len(d.test) == 4 and len(d.train) + len(d.val) == 12
    x, y = d.train[0]
    assert x.shape == (3, 32, 32) and y in (0, 1)
