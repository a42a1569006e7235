"""``surgery run``: train (or load), prune, fine-tune, evaluate, write the run folder.

Stages, each checkpointed under ``RUN/checkpoints`` so that ``run(resume=RUN)`` goes on
where a run stopped (per epoch inside training and fine-tuning):

1. data and model (``model.checkpoint`` loads trained weights and skips training);
2. train the unpruned model; with ``data.classes`` it is trained on every class and its
   classifier is then reduced to the kept ones (:func:`surgery.keep_classes`);
3. measure the original; prune (any criterion, budget, iterative steps with fine-tuning
   between them); 4. fine-tune (optionally distilling from the original); 5. measure the
   pruned model and write ``config.yaml``, ``metrics.json``, ``history.csv``, ``plan.json``,
   ``model.pt`` (:func:`surgery.save`), ``log.txt`` and the report.

Under ``torchrun`` every rank trains with DistributedDataParallel, calibration statistics
are all-reduced, rank 0's pruning decision is broadcast and replayed on the other ranks
(so all hold the same model), and only rank 0 writes.
"""
from __future__ import annotations

import copy
import csv
import dataclasses
import json
import os
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm.auto import tqdm

from surgery.core.errors import ArgumentError, ArgumentTypeError
import surgery.criteria as _criteria

from surgery.core.architectures import build, build_function, is_function_spec
from surgery.plan import history
from surgery.layers import keep_classes
from surgery.core.metrics import count_flops
from surgery.pipeline import data as datasets
from surgery.pipeline.insight import insight
from surgery.pipeline.config import KINDS, ConfigError, RunConfig, check_values, prune_config, resolve, to_yaml
from surgery.pipeline.measure import busy_warning, latency_interleaved, measure
from surgery.pipeline.report_files import write_reports
from surgery.reporting.render import budget_text
from surgery.pipeline.training import distributed, evaluate_accuracy, fit, is_main, sync_from_rank0
from surgery.plan import Plan
from surgery.pruner import Pruner
from surgery.repair.recalibrate import recalibrate
from surgery.repair.reconstruct import reconstruct
from surgery.replay import apply_plan
from surgery.saving import load, save
from surgery.sparsity import make_permanent, sparsify

__all__ = ["run", "dry_run", "Result"]


@dataclass
class Result:
    """What a run produced: the folder, the metrics (as in metrics.json) and both models."""
    out: Path
    metrics: dict
    model: nn.Module
    original: nn.Module | None
    config: RunConfig


def run(config: RunConfig | dict | str | os.PathLike | None = None, *, resume: str | os.PathLike | None = None,
        overrides: list | tuple = (), eval_only: bool = False, model_path: str | os.PathLike | None = None) -> Result:
    """Run the pipeline. ``config``: a RunConfig, a dict of sections, a YAML path, or None
    (the defaults: digits, a small CNN, half the FLOPs). A run folder is one run: ``out``
    naming a folder that holds another run is refused. ``resume``: a run folder to finish;
    ``overrides`` (``["finetune.epochs=5"]``) may change only stages that have not finished
    there (a changed finished stage is refused, naming the key). ``eval_only`` with
    ``model_path`` (a file from :func:`surgery.save`) only measures it; ``model_path`` without
    ``eval_only`` is refused (to start from trained weights, set ``model.checkpoint``).

    Example:
        >>> from surgery.pipeline import run
        >>> result = run({"train": {"epochs": 2}, "finetune": {"epochs": 1}, "report": False,
        ...               "eval": {"latency": False}, "out": "/tmp/surgery-doctest-run"})  # doctest: +SKIP
        >>> sorted(result.metrics)                                                       # doctest: +SKIP
        ['accuracy_after_prune', 'original', 'pruned', 'steps', 'times', 'verification']
    """
    if model_path is not None and not eval_only:
        raise ArgumentError("model_path (--model-path) is only read with eval_only=True (--eval-only), which "
                            "measures that saved model; to prune and fine-tune from trained weights, set "
                            "model.checkpoint=<a state_dict file> instead")
    cfg, out = _setup(config, resume, overrides)
    ctx = _Context(cfg, out)
    try:
        if eval_only:
            return ctx.evaluate_only(model_path)
        return ctx.pipeline()
    except BaseException as err:
        ctx.failed(err)
        raise
    finally:
        ctx.close()


def dry_run(config: RunConfig | dict | str | os.PathLike | None = None, overrides: list | tuple = ()) -> str:
    """What ``run`` would prune, on the untrained model, as text: the plan (groups and the
    channels each loses) and its preview (channels, parameters and FLOPs per layer before and
    after). Nothing is trained and nothing is written."""
    cfg = check_values(config) if isinstance(config, RunConfig) else resolve(config, env={}, overrides=overrides)
    _seed(cfg.seed)
    data = datasets.load(cfg.data, cfg.seed)
    model = build(cfg.model.name, num_classes=data.num_classes, **cfg.model.kwargs).eval()
    p = cfg.prune
    criterion = _criteria.get(p.criterion, **p.criterion_options)
    calib = datasets.loader(data.calibration, cfg.data.batch_size) if criterion.needs_data else None
    pruner = Pruner(model, _example(data, torch.device("cpu")), prune_config(p), data=calib,
                    max_batches=p.max_batches if calib is not None else None)
    lines = [f"dry run: {cfg.model.name} on {cfg.data.name}, {budget_text(dataclasses.asdict(p))}, criterion "
             f"{p.criterion}, {p.iterative_steps} step(s); first step shown, on the untrained model (trained "
             f"weights choose other channels, the same counts)", "", pruner.plan().summary(), "",
             str(pruner.preview()), "", "nothing was trained or written"]
    return "\n".join(lines)


def _setup(config, resume, overrides=()) -> tuple[RunConfig, Path]:
    if resume is not None:
        if config is not None:
            raise ArgumentError("give either a configuration or resume=<run folder> (its config.yaml is the "
                                "configuration), not both; changes go in overrides")
        return _resumed(Path(resume), list(overrides))
    if config is None:
        cfg = resolve(env={}, overrides=overrides)
    elif isinstance(config, RunConfig):
        if overrides:
            raise ArgumentError("overrides go with a dict, a YAML path or resume=, not with a RunConfig object")
        cfg = check_values(config)
    elif isinstance(config, (dict, str, os.PathLike)):
        cfg = resolve(config, env={}, overrides=overrides)
    else:
        raise ArgumentTypeError(f"config must be a RunConfig, a dict, a YAML path or None, got {type(config).__name__}")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{cfg.model.name}-{cfg.data.name}")
    out = Path(cfg.out or os.path.join("runs", f"{name}-{stamp}"))
    if (out / "config.yaml").exists() or (out / "checkpoints").exists():
        raise ConfigError(f"{out} already holds a run (its config.yaml and checkpoints are that run's): finish or "
                          f"change it with --resume {out} (run(resume=...)), or give a new folder with --out")
    return cfg, out


# which configuration keys each stage reads: a finished stage's keys cannot change on resume
_STAGE_KEYS = {"train": ("seed", "device", "model.", "data.", "train."), "prune": ("prune.",),
               "finetune": ("finetune.",)}


def _finished_stages(folder: Path) -> list:
    ckpt = folder / "checkpoints"
    done = [("train", ckpt / "trained.pt"), ("prune", ckpt / "pruned.pt"), ("finetune", folder / "metrics.json")]
    return [stage for stage, path in done if path.exists()]


def _resumed(folder: Path, overrides: list) -> tuple[RunConfig, Path]:
    """The stored configuration with ``overrides`` applied, refused where they would change a
    stage the folder has already finished."""
    if not (folder / "config.yaml").exists():
        raise FileNotFoundError(f"{folder} is not a run folder (no config.yaml); give the folder a run wrote")
    stored = resolve(folder / "config.yaml", env={})
    cfg = resolve(folder / "config.yaml", env={}, overrides=overrides) if overrides else stored
    old, new = _flat(dataclasses.asdict(stored)), _flat(dataclasses.asdict(cfg))
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k) and k != "out")
    finished = _finished_stages(folder)
    for key in changed:
        stage = next((s for s, prefixes in _STAGE_KEYS.items() if key.startswith(prefixes) or key in prefixes), None)
        if stage in finished:
            raise ConfigError(f"--resume {folder}: {key} cannot change, the {stage} stage has finished in this folder "
                              f"(stages finished: {', '.join(finished)}); start a new run with --out to change it")
    return cfg, folder


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict) and k not in ("kwargs", "criterion_options", "ratios"):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


class _Context:
    def __init__(self, cfg: RunConfig, out: Path) -> None:
        self.cfg, self.out = cfg, out
        self.ckpt = out / "checkpoints"
        self._own_pg = _init_distributed()
        self.device = _device(cfg.device)
        self.rows: list[dict] = []
        self.times: dict[str, float] = {}
        self.origins: dict[str, str] = {}  # checkpoint -> where it came from (trained here, loaded from ...)
        self.facts = run_facts(cfg, self.device)
        if is_main():
            self.ckpt.mkdir(parents=True, exist_ok=True)
            (out / "config.yaml").write_text(_header(self.facts) + to_yaml(cfg))
            self._log_file = open(out / "log.txt", "a", encoding="utf-8")
        else:
            self._log_file = None
        _seed(cfg.seed)
        self.log(f"run: {self.facts['budget']}; world size {self.facts['world_size']}, backend "
                 f"{self.facts['backend']}, device {self.device}")
        if cfg.device != "cuda" and self.device.type == "cpu" and (cfg.train.amp or cfg.finetune.amp):
            self.log("amp: mixed precision is a CUDA feature; on this CPU run train.amp/finetune.amp are ignored")

    def failed(self, err: BaseException) -> None:
        """Say in log.txt and in metrics.json (status "failed") that this run stopped, and why."""
        if not is_main() or self._log_file is None:
            return
        self.log(f"FAILED: {type(err).__name__}: {err}")
        (self.out / "metrics.json").write_text(json.dumps(
            {"status": "failed", "error": f"{type(err).__name__}: {err}", **self.facts,
             "origins": self.origins}, indent=1))

    def log(self, text: str) -> None:
        if not is_main():
            return
        tqdm.write(text)
        self._log_file.write(f"{time.strftime('%H:%M:%S')} {text}\n")
        self._log_file.flush()

    def close(self) -> None:
        if self._log_file:
            self._log_file.close()
        if self._own_pg:
            dist.destroy_process_group()

    # ---- stages ------------------------------------------------------------------------
    def pipeline(self) -> Result:
        cfg = self.cfg
        data = datasets.load(cfg.data, cfg.seed)
        self.log(f"data: {cfg.data.name}, {len(data.train)} train / {len(data.val or [])} val / "
                 f"{len(data.test)} test, {data.num_classes} classes, input {data.input_shape}")
        original = self._trained_original(data)
        metrics0 = self._cached("original_metrics.json", lambda: self._measure(original, data))
        self.log(f"original: accuracy {metrics0['accuracy']:.4f}, {metrics0['params']:,} params, "
                 f"{metrics0['flops']:,} FLOPs")
        pruned, steps, verification = self._pruned(original, data)
        after_prune = evaluate_accuracy(pruned, data.test, self.device)
        one_shot = {"accuracy": after_prune, **({"accuracy_structural": steps[-1]["accuracy_structural"],
                                                 "repairs": steps[-1]["repairs"]} if steps[-1].get("repairs") else {})}
        self.log(f"pruned: accuracy {after_prune:.4f} before fine-tuning; {verification}")
        _same_on_every_rank(pruned)
        pruned = self._finetuned(pruned, original, data)
        metrics1 = self._measure(pruned, data)
        metrics0, metrics1, busy = self._timed(original, pruned, metrics0, metrics1, data)
        self.log(f"fine-tuned: accuracy {metrics1['accuracy']:.4f}, {metrics1['params']:,} params "
                 f"({metrics1['params'] / metrics0['params']:.1%}), {metrics1['flops']:,} FLOPs "
                 f"({metrics1['flops'] / metrics0['flops']:.1%})")
        metrics = {"status": "finished", **self.facts, "origins": self.origins, "latency_warning": busy,
                   "original": metrics0, "pruned": metrics1, "accuracy_after_prune": after_prune, "one_shot": one_shot,
                   "steps": steps, "verification": verification, "times": self._times(),
                   "class_names": data.class_names, "input_shape": list(data.input_shape),
                   "num_classes_trained": self._trained_classes}
        self._write_insight(original, data, metrics1["channels"])  # every rank: calibration is collective
        self._write(pruned, original, metrics, data)
        return Result(self.out, metrics, pruned, original, cfg)

    def evaluate_only(self, model_path) -> Result:
        if model_path is None:
            raise ArgumentError("eval_only needs model_path=<a file written by surgery.save> (--model-path)")
        data = datasets.load(self.cfg.data, self.cfg.seed)
        model = load(model_path, self._fresh(data.num_classes)).to(self.device)
        measured = measure(model, data.test, data.input_shape, self.device, data.num_classes, self.cfg.eval,
                           self.cfg.data.batch_size)
        busy = busy_warning(measured.get("latency_ms"))
        if busy:
            self.log(f"WARNING: {busy}")
        metrics = {"status": "finished", **self.facts, "pruned": measured, "class_names": data.class_names,
                   "evaluated": str(model_path), "latency_warning": busy}
        self.log(f"{model_path}: accuracy {metrics['pruned']['accuracy']:.4f}, "
                 f"{metrics['pruned']['params']:,} params")
        if is_main():
            (self.out / "metrics.json").write_text(json.dumps(metrics, indent=1))
        return Result(self.out, metrics, model, None, self.cfg)

    def _fresh(self, num_classes: int) -> nn.Module:
        return build(self.cfg.model.name, num_classes=num_classes, **self.cfg.model.kwargs)

    def _trained_original(self, data) -> nn.Module:
        cfg, done = self.cfg, self.ckpt / "trained.pt"
        full = data if data.classes is None else datasets.load(dataclasses.replace(cfg.data, classes=None), cfg.seed)
        self._trained_classes = full.num_classes
        model = self._fresh(full.num_classes)
        if done.exists():
            model.load_state_dict(torch.load(done, map_location="cpu", weights_only=True))
            self.origins["trained"] = f"trained earlier in this run folder ({done}), resumed"
            self.log(f"train: loaded the trained model from {done}")
        elif cfg.model.checkpoint:
            model.load_state_dict(torch.load(cfg.model.checkpoint, map_location="cpu", weights_only=True))
            self.origins["trained"] = f"loaded from model.checkpoint {cfg.model.checkpoint}"
            self.log(f"train: skipped, weights from {cfg.model.checkpoint}")
        else:
            self.origins["trained"] = "trained in this run"
            t0 = time.perf_counter()
            self.rows += fit(model, full, cfg.train, stage="train", device=self.device, seed=cfg.seed,
                             batch_size=cfg.data.batch_size, checkpoint=str(self.ckpt / "train_last.pt"),
                             log=self.log)
            self.times["train_s"] = time.perf_counter() - t0
            if is_main():
                torch.save(model.state_dict(), done)
        sync_from_rank0(model)  # loaded or trained, every rank starts pruning from rank 0's weights
        if data.classes is not None:
            keep_classes(model, data.classes)
            self.log(f"classifier reduced to classes {data.classes} ({', '.join(data.class_names)})")
        return model.to(self.device).eval()

    def _masked(self, original: nn.Module, data) -> tuple[nn.Module, list, str]:
        """Kernel, intra-kernel or weight sparsity: masks (torch.nn.utils.prune) that fine-tuning
        keeps, folded into plain weights after it; shapes and FLOPs do not change."""
        p = self.cfg.prune
        self.origins["pruned"] = f"masked in this run ({p.kind} sparsity)"
        model = copy.deepcopy(original)
        report = sparsify(model, p.ratio, granularity=KINDS[p.kind])
        steps = [{"step": 1, "accuracy": evaluate_accuracy(model, data.test, self.device), "flops": 1.0,
                  "sparsity": report.overall}]
        self.log(f"prune ({p.kind} masks): {report.overall:.1%} of Conv/Linear weights are zero, accuracy "
                 f"{steps[0]['accuracy']:.4f}")
        return model, steps, f"masks only ({p.kind} sparsity {report.overall:.1%}): shapes unchanged, nothing rewritten"

    def _pruned(self, original: nn.Module, data) -> tuple[nn.Module, list, str]:
        if self.cfg.prune.kind != "channel":
            return self._masked(original, data)
        done, info = self.ckpt / "pruned.pt", self.ckpt / "pruned.json"
        if done.exists() and info.exists():
            self.origins["pruned"] = f"pruned earlier in this run folder ({done}), resumed"
            self.log(f"prune: loaded the pruned model from {done}")
            saved = json.loads(info.read_text())
            return load(done, self._fresh(data.num_classes)).to(self.device), saved["steps"], saved["verification"]
        p, cfg = self.cfg.prune, self.cfg
        self.origins["pruned"] = "pruned in this run"
        example = _example(data, self.device)
        config = dataclasses.replace(prune_config(p), recalibrate=False, reconstruct="none")  # repairs: below
        needs_data = _criteria.get(p.criterion, **p.criterion_options).needs_data
        calib = datasets.loader(data.calibration, cfg.data.batch_size, distributed=distributed()) if needs_data else None
        t0 = time.perf_counter()
        pruner = Pruner(original, example, config, data=calib, max_batches=p.max_batches if needs_data else None)
        repair_data = datasets.loader(data.calibration, cfg.data.batch_size)
        flops0 = count_flops(original.cpu(), example.cpu())
        original.to(self.device)
        steps = []
        for i in range(p.iterative_steps):
            before = copy.deepcopy(pruner.model) if (distributed() and dist.get_rank()) or \
                p.reconstruct != "none" else None
            pruner.step()
            _agree(pruner, before if distributed() and dist.get_rank() else None, example)
            model = pruner.model
            _same_on_every_rank(model)
            steps.append({"step": i + 1, "accuracy": evaluate_accuracy(model, data.test, self.device),
                          "flops": count_flops(model.cpu(), example.cpu()) / flops0})
            model.to(self.device)
            self._repair(before, model, repair_data, steps[-1], data)
            self.log(f"prune step {i + 1}/{p.iterative_steps}: {steps[-1]['flops']:.1%} of FLOPs kept, "
                     f"accuracy {steps[-1]['accuracy']:.4f}" + (f" ({steps[-1]['accuracy_structural']:.4f} before "
                     f"{', '.join(steps[-1]['repairs'])})" if steps[-1].get("repairs") else ""))
            if p.epochs_between and i + 1 < p.iterative_steps:
                between = dataclasses.replace(cfg.finetune, epochs=p.epochs_between, patience=None)
                self.rows += fit(model, data, between, stage=f"between {i + 1}", device=self.device,
                                 seed=cfg.seed + i + 1, batch_size=cfg.data.batch_size, log=self.log)
        self.times["prune_s"] = time.perf_counter() - t0
        verification = str(pruner.verification)
        if is_main():
            save(pruner.model, done, architecture=self._architecture(data))
            info.write_text(json.dumps({"steps": steps, "verification": verification}))
        return pruner.model.to(self.device), steps, verification

    def _repair(self, before: nn.Module | None, model: nn.Module, batches, step: dict, data) -> None:
        """Weight updates after the verified rewrite (prune.reconstruct, prune.recalibrate), with the
        one-shot accuracy measured before and after them, so a report shows what they bought."""
        p = self.cfg.prune
        done = []
        if p.reconstruct != "none":
            reconstruct(before, model, batches, max_batches=p.max_batches)
            done.append("least-squares reconstruction")
        if p.recalibrate:
            recalibrate(model, batches, max_batches=p.max_batches)
            done.append("BatchNorm recalibration")
        if done:
            sync_from_rank0(model)  # ranks calibrated on their own samples: all take rank 0's
            step["accuracy_structural"], step["repairs"] = step["accuracy"], done
            step["accuracy"] = evaluate_accuracy(model, data.test, self.device)

    def _finetuned(self, pruned: nn.Module, original: nn.Module, data) -> nn.Module:
        cfg = self.cfg
        t0 = time.perf_counter()
        teacher = copy.deepcopy(original) if cfg.finetune.distill else None
        self.rows += fit(pruned, data, cfg.finetune, stage="finetune", device=self.device, seed=cfg.seed + 100,
                         batch_size=cfg.data.batch_size, teacher=teacher,
                         checkpoint=str(self.ckpt / "finetune_last.pt"), log=self.log)
        self.times["finetune_s"] = time.perf_counter() - t0
        return make_permanent(pruned).eval()  # mask kinds: zeros folded into plain weights

    def _write_insight(self, original: nn.Module, data, kept: dict) -> None:
        p = self.cfg.prune
        needs_data = _criteria.get(p.criterion, **p.criterion_options).needs_data
        calib = datasets.loader(data.calibration, self.cfg.data.batch_size) if needs_data else None
        example = torch.zeros(1, *data.input_shape, device=self.device)
        info = insight(original, example, _criteria.get(p.criterion, **p.criterion_options), kept, data=calib, max_batches=p.max_batches,
                       ignored_layers=tuple(p.ignored_layers))
        if is_main():
            (self.out / "insight.json").write_text(json.dumps(info))

    def _measure(self, model: nn.Module, data) -> dict:
        return measure(model, data.test, data.input_shape, self.device, data.num_classes, self.cfg.eval,
                       self.cfg.data.batch_size, timed=False)

    def _timed(self, original: nn.Module, pruned: nn.Module, m0: dict, m1: dict, data) -> tuple:
        """Both models' latency, timed interleaved in this process; a busy machine is said."""
        e = self.cfg.eval
        if not e.latency:
            return m0, m1, ""
        lat = latency_interleaved({"original": original, "pruned": pruned}, data.input_shape, e.batch_sizes,
                                  e.repeats, e.warmup, self.device)
        extra = {"latency_threads": torch.get_num_threads(), "latency_device": str(self.device)}
        busy = busy_warning(lat["original"], lat["pruned"])
        if busy:
            self.log(f"WARNING: {busy}")
        return ({**m0, "latency_ms": lat["original"], **extra}, {**m1, "latency_ms": lat["pruned"], **extra}, busy)

    def _cached(self, name: str, compute: Callable[[], Any]) -> Any:
        path = self.ckpt / name
        if path.exists():
            return json.loads(path.read_text())
        value = compute()
        if is_main():
            path.write_text(json.dumps(value))
        return value

    def _builders(self) -> dict:
        """The run's own model function (the user's config named it) for rebuilding the report."""
        name = self.cfg.model.name
        return {name: build_function(name)} if is_function_spec(name) else {}

    def _architecture(self, data) -> dict:
        return {"name": self.cfg.model.name, "num_classes": data.num_classes, **self.cfg.model.kwargs}

    def _times(self) -> dict:
        path = self.ckpt / "times.json"
        old = json.loads(path.read_text()) if path.exists() else {}
        merged = {**old, **self.times}
        if is_main():
            path.write_text(json.dumps(merged))
        return merged

    def _write(self, pruned: nn.Module, original: nn.Module, metrics: dict, data) -> None:
        if not is_main():
            return
        (self.out / "metrics.json").write_text(json.dumps(metrics, indent=1))
        (self.out / "config.yaml").write_text(_header(self.facts, self.origins) + to_yaml(self.cfg))
        save(pruned.cpu(), self.out / "model.pt", architecture=self._architecture(data))
        plans = [json.loads(p) for p in history(pruned)]
        (self.out / "plan.json").write_text(json.dumps(plans, indent=1))
        rows = _history_rows(self.ckpt, self.rows)
        with open(self.out / "history.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, ["stage", "epoch", "loss", "train_acc", "val_acc", "lr", "seconds"])
            writer.writeheader()
            writer.writerows(rows)
        if self.cfg.report:
            write_reports(self.out, builders=self._builders())
        self.log(f"wrote {self.out}")


def _history_rows(ckpt: Path, rows: list) -> list:
    """Rows of this process plus those of stages finished before a resume."""
    seen = {(r["stage"], r["epoch"]) for r in rows}
    old = []
    for name in ("train_last.pt", "finetune_last.pt"):
        path = ckpt / name
        if path.exists():
            old += [r for r in torch.load(path, map_location="cpu", weights_only=True)["rows"]
                    if (r["stage"], r["epoch"]) not in seen]
    return sorted(old + rows, key=lambda r: (["train", "finetune"].index(r["stage"])
                                              if r["stage"] in ("train", "finetune") else 0.5, r["epoch"]))


def _agree(pruner: Pruner, before: nn.Module | None, example: torch.Tensor) -> None:
    """Under torch.distributed: rank 0's plan for this step, replayed on the other ranks."""
    if not distributed():
        return
    box = [pruner.plans[-1].to_json() if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    if dist.get_rank():
        pruner.model = apply_plan(before, Plan.from_json(box[0]), example_inputs=example, inplace=True)


def _same_on_every_rank(model: nn.Module) -> None:
    """Under torch.distributed: every rank must hold the same architecture and weights."""
    if not distributed():
        return
    shapes = [tuple(t.shape) for t in model.state_dict().values()]
    total = float(sum(t.double().sum() for t in model.state_dict().values() if t.is_floating_point()))
    mine, every = (shapes, round(total, 6)), [None] * dist.get_world_size()
    dist.all_gather_object(every, mine)
    if any(other != every[0] for other in every):
        raise RuntimeError("ranks hold different pruned models after the broadcast of rank 0's plan; "
                           "please report this as a bug")


def run_facts(cfg: RunConfig, device: torch.device) -> dict:
    """What a run folder states about how it ran: the budget, the world size and backend."""
    world = dist.get_world_size() if distributed() else 1
    return {"budget": budget_text(dataclasses.asdict(cfg.prune)), "world_size": world,
            "backend": dist.get_backend() if distributed() else "none (one process)", "device": str(device)}


def _header(facts: dict, origins: dict | None = None) -> str:
    lines = [f"# {facts['budget']}; world size {facts['world_size']}, backend {facts['backend']}, "
             f"device {facts['device']}"]
    lines += [f"# {name} model: {origin}" for name, origin in (origins or {}).items()]
    return "\n".join(lines) + "\n"


def _init_distributed() -> bool:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not distributed():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        return True
    return False


def _example(data, device) -> torch.Tensor:
    """Two calibration images to trace and verify on: real inputs, where zeros would make every
    feature map constant and verification weak."""
    n = min(2, len(data.calibration))
    if not n:
        return torch.zeros(1, *data.input_shape, device=device)
    return torch.stack([data.calibration[i][0] for i in range(n)]).to(device)


def _device(name: str) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("device=cuda but CUDA is not available; use device=cpu or auto")
        index = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device("cpu")


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
