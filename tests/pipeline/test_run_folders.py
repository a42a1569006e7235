"""Issue 30: a run folder is one run and says how it ran; the rest of a new user's first day
(dry runs, class counts, latency that says when it cannot be trusted, failures recorded).
Each test reproduces a point that failed before its fix."""
import json
import os

import pytest
import torch
import yaml

from surgery import cli
from surgery.pipeline import ConfigError, run, runner
from surgery.pipeline.measure import BUSY_SPREAD, busy_warning
from support.runs import run_config

QUICK = {"train": {"epochs": 1}, "finetune": {"epochs": 1}, "report": False,
         "eval": {"repeats": 2, "warmup": 1, "batch_sizes": [1]}}


def _quick(out, **sections):
    return run_config(QUICK, out, **sections)


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    out = tmp_path_factory.mktemp("folders") / "r1"
    run(_quick(out))
    return out


# ---------------------------------------------------------------- 1. a reused --out is refused
def test_a_folder_holding_another_run_is_refused_with_the_way_out(done, capsys):
    before = (done / "config.yaml").read_text()
    with pytest.raises(ConfigError, match=r"already holds a run.*--resume"):
        run(_quick(done, prune={"criterion": "fpgm", "ratio": 0.2}))
    assert cli.main(["run", "prune.criterion=fpgm", "prune.ratio=0.2", "--out", str(done)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert (done / "config.yaml").read_text() == before  # the folder still states its own run


# ---------------------------------------------------------------- 2. --resume takes overrides, for unfinished stages
def test_resume_refuses_an_override_of_a_finished_stage_naming_it(done, capsys):
    assert cli.main(["run", "--resume", str(done), "prune.ratio=0.2"]) == 2
    err = capsys.readouterr().err
    assert "prune.ratio cannot change" in err and "prune stage has finished" in err
    with pytest.raises(ConfigError, match="train.epochs cannot change"):
        run(resume=done, overrides=["train.epochs=3"])


def test_resume_applies_an_override_of_a_stage_not_yet_finished(tmp_path):
    out = tmp_path / "r"
    run(_quick(out, finetune={"epochs": 0}))
    (out / "metrics.json").unlink()  # as if the run had stopped during fine-tuning
    result = run(resume=out, overrides=["finetune.epochs=1"])
    assert result.config.finetune.epochs == 1
    assert yaml.safe_load((out / "config.yaml").read_text())["finetune"]["epochs"] == 1
    assert result.metrics["origins"]["trained"].startswith("trained earlier in this run folder")


# ---------------------------------------------------------------- 3. --model-path without --eval-only
def test_model_path_without_eval_only_is_refused(done, capsys, tmp_path):
    assert cli.main(["run", "--model-path", str(done / "model.pt"), "train.epochs=0", "--out", str(tmp_path / "x")]) == 2
    assert "--eval-only" in capsys.readouterr().err and not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match="eval_only"):
        run(_quick(tmp_path / "y"), model_path=done / "model.pt")


# ---------------------------------------------------------------- 4. the budget is stated
def test_the_resolved_config_and_the_run_state_the_budget(done, capsys):
    assert cli.main(["config", "show"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["prune"]["target_flops"] == 0.5
    assert yaml.safe_load((done / "config.yaml").read_text())["prune"]["target_flops"] == 0.5
    metrics = json.loads((done / "metrics.json").read_text())
    assert metrics["budget"] == "target: keep 50% of FLOPs"


def test_report_page_one_states_the_target_and_names_the_recovery_ratio(done):
    from surgery.reporting import render
    from surgery.pipeline.report_files import run_report
    report = run_report(done)
    assert "target: keep 50% of FLOPs" in render.headline(report)
    report.metrics = {**report.metrics, "accuracy_after_prune": 0.1}
    notes = " ".join(render.risks(report))
    assert "recovery ratio (fine-tuned / original accuracy)" in notes and "recovered" not in notes


# ---------------------------------------------------------------- 5. the model's own class count
def test_torchvision_models_keep_their_own_class_count_and_bad_weights_are_named(tmp_path, capsys):
    assert cli.build_model("torchvision:resnet18").fc.out_features == 1000
    assert cli.build_model("resnet20").fc.out_features == 10
    torch.save(cli.build_model("torchvision:resnet18", 10).state_dict(), tmp_path / "w.pt")
    assert cli.main(["prune", "torchvision:resnet18", "--weights", str(tmp_path / "w.pt"), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "fc.weight (file (10, 512), model (1000, 512))" in err


# ---------------------------------------------------------------- 6. latency you can trust
def test_latency_has_a_spread_and_a_busy_machine_is_said(done):
    stats = {"1": {"median_ms": 1.0, "p10_ms": 0.9, "p90_ms": 1.1, "spread": 0.2}}
    assert busy_warning(stats) == ""
    busy = {"1": {"median_ms": 1.0, "p10_ms": 0.5, "p90_ms": 3.0, "spread": 2.5}}
    assert "not reliable" in busy_warning(stats, busy) and f"{BUSY_SPREAD:.0%}" in busy_warning(busy)
    metrics = json.loads((done / "metrics.json").read_text())
    for side in ("original", "pruned"):
        assert set(metrics[side]["latency_ms"]["1"]) == {"median_ms", "p10_ms", "p90_ms", "spread"}
    assert "latency_warning" in metrics


# ---------------------------------------------------------------- 9. dry runs
def test_dry_runs_print_the_plan_and_write_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["run", "--dry-run", "train.epochs=1"]) == 0
    out = capsys.readouterr().out
    assert "groups pruned" in out and "total" in out and "nothing was trained or written" in out
    assert cli.main(["prune", "resnet20", "--dry-run", "--output", "small.pt"]) == 0
    out = capsys.readouterr().out
    assert "groups pruned" in out and "->" in out
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------- 10. the smaller points
def test_a_failed_run_says_so_in_log_and_metrics(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk full (simulated)")
    monkeypatch.setattr(runner, "fit", broken)
    with pytest.raises(RuntimeError):
        run(_quick(tmp_path / "f"))
    metrics = json.loads((tmp_path / "f" / "metrics.json").read_text())
    assert metrics["status"] == "failed" and "disk full" in metrics["error"]
    assert "FAILED: RuntimeError: disk full" in (tmp_path / "f" / "log.txt").read_text()


def test_a_run_records_world_size_backend_and_where_each_model_came_from(done):
    metrics = json.loads((done / "metrics.json").read_text())
    assert metrics["status"] == "finished" and metrics["world_size"] == 1 and "backend" in metrics
    assert metrics["origins"] == {"trained": "trained in this run", "pruned": "pruned in this run"}
    header = (done / "config.yaml").read_text()
    assert header.startswith("# target: keep 50% of FLOPs; world size 1")
    assert "# trained model: trained in this run\n# pruned model: pruned in this run\n" in header


def test_amp_on_a_cpu_run_is_said_to_be_ignored(done):
    assert "amp: mixed precision is a CUDA feature" in (done / "log.txt").read_text()


def test_a_missing_dataset_message_does_not_offer_a_download(tmp_path):
    from surgery.pipeline.config import DataSection
    from surgery.pipeline.data import load
    with pytest.raises(FileNotFoundError) as err:
        load(DataSection(name="cifar10", root=str(tmp_path)), 0)
    assert "nothing is downloaded" in str(err.value) and "download=True" not in str(err.value)


def test_a_function_spec_from_another_folder_says_how_to_load_it(tmp_path, monkeypatch):
    from surgery.core.architectures import build_function
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"builders=\{'nets.py:build': build\}.*model="):
        build_function("nets.py:build")


# ---------------------------------------------------------------- 8. kernel and intra-kernel sparsity in the pipeline
@pytest.mark.parametrize("kind", ["kernel", "intra_kernel"])
def test_mask_kinds_run_through_the_pipeline_and_show_their_sparsity(kind, tmp_path):
    import surgery
    from surgery.metrics import count_params
    from surgery.sparsity import sparsity_report
    result = run(_quick(tmp_path / kind, prune={"kind": kind}, report=True))
    m = result.metrics
    assert m["budget"].startswith("target: zero 50% of the") and f"{kind} sparsity" in m["budget"]
    assert 0.3 < m["pruned"]["sparsity"] < 0.6 and m["original"]["sparsity"] < 0.01
    assert m["pruned"]["params"] == m["original"]["params"] and m["steps"][0]["flops"] == 1.0
    loaded = surgery.load(result.out / "model.pt")  # zeros kept through fine-tuning and saving
    assert abs(sparsity_report(loaded).overall - m["pruned"]["sparsity"]) < 1e-9
    assert count_params(loaded) == m["pruned"]["params"]
    assert "zero weights" in (result.out / "report.md").read_text()


def test_a_mask_kind_needs_a_ratio_and_unknown_kinds_are_refused():
    from surgery.pipeline import resolve
    with pytest.raises(ConfigError, match="prune.kind must be one of"):
        resolve(overrides=["prune.kind=filters"], env={})
    with pytest.raises(ConfigError, match="give prune.ratio"):
        resolve(overrides=["prune.kind=kernel", "prune.target_flops=0.5"], env={})
    assert resolve(overrides=["prune.kind=kernel"], env={}).prune.ratio == 0.5


def test_a_sweep_compares_kinds_and_every_run_gets_a_report(tmp_path, capsys):
    assert cli.main(["sweep", "--kinds", "channel,kernel", "--ratios", "0.5", "--out", str(tmp_path / "s"),
                     "train.epochs=1", "finetune.epochs=0", "eval.latency=false"]) == 0
    out = capsys.readouterr().out
    assert "| l1 | 0.5 |" in out and "| kernel masks | 0.5 |" in out
    runs = [p for p in (tmp_path / "s").iterdir() if p.is_dir()]
    assert len(runs) == 2 and all((p / "report.html").exists() for p in runs)


# ---------------------------------------------------------------- 7. the PDF report, as a person sees it
def test_the_pdf_report_has_few_pages_none_mostly_empty_and_each_figure_once(tmp_path):
    pdfium = pytest.importorskip("pypdfium2")
    import numpy as np
    result = run(_quick(tmp_path / "rep", report=True))
    pdf = pdfium.PdfDocument(str(result.out / "report.pdf"))
    assert 2 <= len(pdf) <= 5  # a 6-layer CNN: summary, figures two to a page, plan
    for i in range(len(pdf)):
        pixels = np.asarray(pdf[i].render(scale=0.5).to_pil().convert("L"))
        inked_rows = (pixels < 200).any(axis=1).mean()
        assert inked_rows > 0.3, f"page {i + 1} is mostly empty ({inked_rows:.0%} of its rows hold anything)"
    text = "".join(pdf[i].get_textpage().get_text_range() for i in range(len(pdf)))
    assert text.count("Output channels of each conv / linear layer") == 1
    assert "target: keep 50% of FLOPs" in pdf[0].get_textpage().get_text_range()
    assert "resolved configuration" not in text  # the full config lives in the HTML and config.yaml
