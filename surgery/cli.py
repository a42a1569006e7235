"""The surgery command line: inspect, prune, or run the whole pipeline.

Examples:
  surgery run                                   (digits: train, prune to half the FLOPs, fine-tune, report)
  surgery run --preset aggressive prune.criterion=taylor --out runs/taylor
  surgery config show --config my.yaml prune.ratio=0.4
  surgery sweep --criteria l1,fpgm --ratios 0.3,0.5 --seeds 0,1
  surgery report runs/taylor
  surgery inspect resnet20
  surgery prune torchvision:resnet18 --ratio 0.5 --input-shape 1,3,224,224 --output small.pt
  surgery prune my_pkg.nets:build --weights trained.pt --target-flops 0.5
  surgery prune resnet20 --criterion taylor --data digits
  surgery prune llama-7b/ --output llama-7b-small/ --ratio 0.2 --calibration text.txt   (block by block)

MODEL is a name from models.create (resnet20, vgg16_bn, ...), torchvision:NAME, timm:NAME,
or module:function / path/to/file.py:function returning an nn.Module (called with
num_classes=N when it accepts it). --weights loads a state_dict (weights_only=True).
For `surgery prune`, MODEL may also be a Hugging Face decoder checkpoint folder (config.json
and safetensors): it is pruned one decoder block at a time into the --output folder.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import warnings
from typing import Dict, List, Optional

import torch
import torch.nn as nn

from surgery.core.config import PruneConfig
from surgery.core.errors import SurgeryError
from surgery.core.version import __version__ as VERSION

__all__ = ["main", "build_model"]



class CliError(SurgeryError):
    """A user error found by the command line itself: printed as one line, exit status 2."""


def build_model(spec: str, num_classes: int | None = None) -> nn.Module:
    """The model named by ``spec`` (see the module docstring), random weights; with
    ``num_classes`` None, the builder's own default (1000 for torchvision and timm ImageNet
    models, 10 for the zoo)."""
    from surgery.core.architectures import build
    try:
        return build(spec, **({} if num_classes is None else {"num_classes": num_classes}))
    except ValueError as err:
        raise CliError(str(err)) from None


def _shape(text: str) -> tuple:
    try:
        shape = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must look like 1,3,32,32, got {text!r}") from None
    if not shape or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return shape


def _pair(text: str) -> tuple:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) == 1:
        values *= 2
    if len(values) != 2:
        raise argparse.ArgumentTypeError(f"expected FIRST,LAST (two integers, e.g. 1,1), got {text!r}")
    return values


def _layer_ratio(text: str) -> tuple:
    name, sep, value = text.rpartition("=")
    try:
        return name, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LAYER=RATIO (e.g. layer1=0.3), got {text!r}") from None


def _flag_kind(f: dataclasses.Field) -> dict:
    """argparse keywords for a PruneConfig field, from its type in a file (``plain``)."""
    plain, choices = f.metadata["plain"], f.metadata["choices"]
    if plain is bool:
        return {"action": "store_true"} if f.default is False else {"action": argparse.BooleanOptionalAction}
    if choices:
        return {"choices": choices}
    kinds = {float: float, int: int, str: str, Optional[float]: float, Optional[int]: int, List[int]: _pair,
             List[str]: str, Dict[str, float]: _layer_ratio}
    kind = {"type": kinds[plain]}
    if plain in (List[str], Dict[str, float]):
        kind["action"] = "append"
    return kind


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per :class:`surgery.PruneConfig` field (``--round-to`` for ``round_to``), with
    the field's help; a flag not given leaves the field's default."""
    for f in dataclasses.fields(PruneConfig):
        if f.metadata["cli"] is None:
            continue
        names = ["--" + f.name.replace("_", "-")] + ([f.metadata["flag"]] if f.metadata["flag"] else [])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        shown = "" if default in (None, (), {}, False) else f" (default {default if not isinstance(default, tuple) else ','.join(map(str, default))})"
        kind = _flag_kind(f)
        if f.metadata["metavar"]:
            kind["metavar"] = f.metadata["metavar"]
        parser.add_argument(*names, dest=f.name, default=argparse.SUPPRESS, help=f.metadata["help"] + shown, **kind)


def config_options(args: argparse.Namespace) -> dict:
    """The PruneConfig fields given on the command line, as PruneConfig values."""
    options = {name: getattr(args, name) for name in PruneConfig.fields() if hasattr(args, name)}
    if "ratios" in options:
        options["ratios"] = dict(options["ratios"])
    for name in ("ignored_layers", "leaf_modules"):
        if name in options:
            options[name] = tuple(options[name])
    return options


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="surgery", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"torch-surgery {VERSION}")
    sub = p.add_subparsers(dest="command", required=True, metavar="{run,config,sweep,report,inspect,prune}")
    _pipeline_parsers(sub)
    for name, text in (("inspect", "print the channel groups (prunable or frozen, and why)"),
                       ("prune", "prune, verify, print the cost before and after, optionally save")):
        s = sub.add_parser(name, help=text, description=text)
        s.add_argument("model", help="models.create name, torchvision:NAME, timm:NAME or module:function")
        s.add_argument("--input-shape", type=_shape, default=(1, 3, 32, 32), help="default 1,3,32,32")
        s.add_argument("--num-classes", type=int, default=None,
                       help="classes of the model's head (default: the model's own: 1000 for torchvision:/timm: "
                            "ImageNet models, 10 for the zoo)")
        s.add_argument("--weights", help="a state_dict file to load into the model first")
        s.add_argument("--seed", type=int, default=0, help="seeds random weights and inputs (default 0)")
    pr = sub.choices["prune"]
    add_config_flags(pr)
    pr.add_argument("--data", help="calibration data for data criteria: digits (bundled) or a pipeline dataset "
                    "(cifar10, mnist, ..., folder) read from --data-root")
    pr.add_argument("--data-root", default="data", help="where --data lives (nothing is downloaded)")
    pr.add_argument("--max-batches", type=int, default=8)
    pr.add_argument("--output", help="save the pruned model (plans + weights, surgery.save) to this file; for a "
                    "checkpoint folder, the new folder to write")
    pr.add_argument("--dry-run", action="store_true",
                    help="print the plan (channels each group loses) and its preview (params and FLOPs per layer "
                         "before and after); change nothing, write nothing")
    _checkpoint_flags(pr.add_argument_group("checkpoint folders (MODEL is a Hugging Face folder; pruned block by "
                                            "block into --output, a new folder)"))
    return p


CHECKPOINT_OPTIONS = ("ratio", "head_ratio", "criterion", "skip_blocks", "verify")  # the PruneConfig fields it reads


CHECKPOINT_DEFAULTS = {"calibration": None, "samples": 32, "seq_len": 256, "batch_size": 4, "feed": "pruned",
                       "bias_compensation": None, "overwrite": False, "replay": None}


def _checkpoint_flags(g) -> None:
    """Flags of ``surgery prune FOLDER``; not given, they are absent from the namespace."""
    kw = dict(default=argparse.SUPPRESS)
    g.add_argument("--calibration", help="a text file (tokenised with the folder's tokenizer) or a tensor file of "
                   "token ids (.pt); needed by data criteria (wanda, flap, activation_norm)", **kw)
    g.add_argument("--samples", type=int, help="calibration windows (default 32)", **kw)
    g.add_argument("--seq-len", type=int, help="tokens per calibration window (default 256)", **kw)
    g.add_argument("--batch-size", type=int, help="windows run through a block at once (default 4)", **kw)
    g.add_argument("--feed", choices=["pruned", "original"],
                   help="the next block sees the pruned block's output (default) or the original's", **kw)
    g.add_argument("--bias-compensation", action=argparse.BooleanOptionalAction,
                   help="FLAP's bias compensation (default: on for --criterion flap only)", **kw)
    g.add_argument("--overwrite", action="store_true", help="replace what --output already holds", **kw)
    g.add_argument("--replay", metavar="PLAN", help="remove exactly what a surgery_plan.json removed (no scoring; "
                   "every block verified again); takes no --ratio", **kw)


def _layering(s: argparse.ArgumentParser) -> None:
    s.add_argument("--config", help="a YAML file of sections (model, data, train, prune, finetune, eval)")
    s.add_argument("--preset", choices=["conservative", "balanced", "aggressive"])
    s.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. prune.ratio=0.4")


def _pipeline_parsers(sub) -> None:
    r = sub.add_parser("run", help="train, prune, fine-tune, evaluate and report (the pipeline)",
                       description="Layers, later wins: --config file, --preset, SURGERY_SECTION__KEY "
                                   "environment variables, then KEY=VALUE overrides.")
    _layering(r)
    r.add_argument("--out", help="run folder (default runs/<model>-<dataset>-<timestamp>)")
    r.add_argument("--resume", metavar="RUN_DIR", help="finish the run in this folder from its last checkpoint; "
                   "KEY=VALUE may change stages that have not finished there")
    r.add_argument("--eval-only", action="store_true", help="only measure --model-path")
    r.add_argument("--dry-run", action="store_true",
                   help="print the plan and its preview on the untrained model; train nothing, write nothing")
    r.add_argument("--model-path", help="a model saved by surgery.save (with --eval-only)")
    c = sub.add_parser("config", help="print the resolved pipeline configuration")
    c.add_argument("action", choices=["show"])
    _layering(c)
    w = sub.add_parser("sweep", help="run a grid of criteria x ratios x seeds; CSV, markdown table and plot")
    _layering(w)
    w.add_argument("--criteria", default="l1", help="comma-separated criteria names")
    w.add_argument("--ratios", default="0.3,0.5,0.7", help="comma-separated ratios")
    w.add_argument("--seeds", default="0", help="comma-separated seeds")
    w.add_argument("--kinds", default=None, help="comma-separated: channel (remove channels), kernel, intra_kernel, "
                   "weight (zero weights with masks); default: prune.kind")
    w.add_argument("--out", help="sweep folder (default runs/sweep-<timestamp>)")
    rp = sub.add_parser("report", help="rebuild report.html and report.pdf of a run folder")
    rp.add_argument("run_dir")
    rp.add_argument("--builder", action="append", default=[], metavar="MODULE:FUNCTION",
                    help="trust this model function named by the run (repeatable); nothing else the run "
                         "folder names is imported")


def _pipeline(args) -> int:
    from surgery.pipeline import config as pconfig
    if args.command == "report":
        from surgery.pipeline.report_files import write_reports
        from surgery.core.architectures import build_function
        for path in write_reports(args.run_dir, builders={b: build_function(b) for b in args.builder}):
            print(path)
        return 0
    overrides = list(args.overrides) + ([f"out={args.out}"] if getattr(args, "out", None) else [])
    if args.command == "run" and args.resume:
        if args.config or args.preset or getattr(args, "out", None):
            raise CliError("--resume RUN takes its configuration from RUN/config.yaml: give changes as KEY=VALUE "
                           "(only for stages that have not finished), not --config, --preset or --out")
        cfg = None
    else:
        cfg = pconfig.resolve(args.config, args.preset, overrides)
    if args.command == "config":
        print(pconfig.to_yaml(cfg), end="")
        return 0
    if args.command == "sweep":
        from surgery.pipeline.sweep import sweep
        result = sweep(cfg, criteria=args.criteria.split(","), ratios=[float(r) for r in args.ratios.split(",")],
                       kinds=args.kinds.split(",") if args.kinds else None,
                       seeds=[int(s) for s in args.seeds.split(",")], out=args.out)
        print(result.markdown)
        return 0
    from surgery.pipeline import run
    if args.dry_run:
        from surgery.pipeline.runner import dry_run
        print(dry_run(cfg))
        return 0
    if args.model_path and not args.eval_only:
        raise CliError("--model-path is only read with --eval-only (it measures that saved model); to prune and "
                       "fine-tune from trained weights, pass model.checkpoint=<a state_dict file>")
    result = run(cfg, resume=args.resume, overrides=args.overrides if args.resume else (),
                 eval_only=args.eval_only, model_path=args.model_path)
    if os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 speaks
        _print_summary(result.metrics, result.out)
    return 0


def _print_summary(metrics: dict, out) -> None:
    before, after = metrics.get("original"), metrics["pruned"]
    print(f"{'':12}{'original':>14}{'pruned':>14}")
    for key in ("accuracy", "params", "flops", "size_bytes"):
        a = "" if before is None else (f"{before[key]:.4f}" if key == "accuracy" else f"{before[key]:,}")
        b = f"{after[key]:.4f}" if key == "accuracy" else f"{after[key]:,}"
        print(f"{key:12}{a:>14}{b:>14}")
    print(f"run folder: {out}")


def main(argv: list | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # KEY=VALUE overrides may follow options (argparse stops collecting positionals there)
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides += extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return _run(args)
    except CliError as err:
        print(f"surgery: error: {err}", file=sys.stderr)
        return 2
    except (SurgeryError, FileNotFoundError) as err:  # refusals that say what to do; anything else is a bug
        print(f"surgery: error: {type(err).__name__}: {err}", file=sys.stderr)
        return 2


def _run(args) -> int:
    if args.command in ("run", "config", "sweep", "report"):
        return _pipeline(args)
    if args.command == "prune" and os.path.isdir(args.model):
        return _prune_checkpoint(args)
    if args.command == "prune":
        given = [f"--{k.replace('_', '-')}" for k in CHECKPOINT_DEFAULTS if hasattr(args, k)]
        if given:
            raise CliError(f"{', '.join(given)} only apply when MODEL is a checkpoint folder; {args.model!r} is not a "
                           f"folder")
    import surgery  # imported here so that `surgery --help` does not load the engine
    torch.manual_seed(args.seed)
    model = build_model(args.model, args.num_classes).eval()
    if args.weights:
        _load_weights(model, args.weights)
    x = torch.randn(*args.input_shape, generator=torch.Generator().manual_seed(args.seed))
    if args.command == "inspect":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            print(surgery.trace(model, x).summary())
        return 0
    return _prune(surgery, model, x, args)


def _prune(surgery, model: nn.Module, x: torch.Tensor, args) -> int:
    from surgery.core.metrics import count_flops, count_params
    options = config_options(args)
    import surgery.criteria as criteria
    crit = criteria.get(options.get("criterion", "l1"))
    if crit.needs_data and not args.data:
        raise CliError(f"criterion {options.get('criterion')} scores channels from data: add --data digits (bundled) "
                       f"or --data cifar10 --data-root DIR (a local copy), and --max-batches N to limit it")
    repairs = options.get("recalibrate") or options.get("reconstruct", "none") != "none"
    if repairs and not args.data:
        raise CliError("--recalibrate / --reconstruct least_squares refit on calibration data: add --data digits "
                       "(bundled) or --data cifar10 --data-root DIR, and --max-batches N")
    data = _calibration(args, tuple(x.shape)) if args.data else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner = surgery.Pruner(model, x, data=data, max_batches=args.max_batches if data else None, **options)
        if args.dry_run:
            print(f"{args.model}: dry run (nothing changed, nothing written); first step of "
                  f"{pruner.config.iterative_steps}\n")
            print(pruner.plan().summary() + "\n")
            print(pruner.preview())
            return 0
        pruned = pruner.run()
    rows = [("params", count_params(model), count_params(pruned)),
            ("FLOPs", count_flops(model, x), count_flops(pruned, x))]
    c = pruner.config
    what = (f"kept {c.target:.0%} of {'FLOPs' if c.target_flops else 'parameters'}" if c.target is not None else
            f"removed {c.ratio:.0%} of " + ("all channels, ranked globally" if c.global_pruning
                                            else "each group's channels"))
    print(f"{args.model}: {what} ({c.criterion}); {pruner.verification}")
    print(f"{'':8}{'before':>14}{'after':>14}{'kept':>8}")
    for name, a, b in rows:
        print(f"{name:8}{a:>14,}{b:>14,}{b / a:>8.1%}")
    if args.output:
        arch = {"name": args.model, **({} if args.num_classes is None else {"num_classes": args.num_classes})}
        surgery.save(pruned, args.output, architecture=arch)
        print(f"saved to {args.output} (surgery.load({args.output!r}) rebuilds it)")
    return 0


def _prune_checkpoint(args) -> int:
    """``surgery prune FOLDER --output OUT``: block by block (surgery.blockwise)."""
    if not os.path.isfile(os.path.join(args.model, "config.json")):
        raise CliError(f"{args.model!r} is a folder without config.json: give a Hugging Face model folder "
                       f"(what save_pretrained writes) or a model name")
    if not args.output:
        raise CliError("a checkpoint folder is pruned into a new folder: add --output OUT_DIR")
    options = config_options(args)
    other = sorted(set(options) - set(CHECKPOINT_OPTIONS))
    if other or args.dry_run or args.data or args.weights:
        flags = [f"--{k.replace('_', '-')}" for k in other] + [f for f, v in (("--dry-run", args.dry_run),
                 ("--data", args.data), ("--weights", args.weights)) if v]
        raise CliError(f"{', '.join(flags)} do not apply to a checkpoint folder; it takes --ratio, --head-ratio, "
                       f"--criterion, --skip-blocks, --no-verify and --calibration/--samples/--seq-len/--feed")
    flags = {k: getattr(args, k, default) for k, default in CHECKPOINT_DEFAULTS.items()}
    if flags["replay"]:
        if options:
            raise CliError(f"--replay takes its options from the plan; drop {', '.join(sorted(options))}")
        from surgery.blockwise.replay import replay_checkpoint
        plan = replay_checkpoint(args.model, args.output, flags["replay"], calibration=flags["calibration"],
                                 overwrite=flags["overwrite"])
        return _said(args, plan)
    if "ratio" not in options:
        raise CliError("add --ratio R (the fraction of every block's MLP channels, and heads unless --head-ratio, "
                       "to remove)")
    from surgery.blockwise import prune_checkpoint
    del flags["replay"]
    plan = prune_checkpoint(args.model, args.output, seed=args.seed, criterion=options.pop("criterion", "wanda"),
                            **flags, **options)
    return _said(args, plan)


def _said(args, plan: dict) -> int:
    """Print what a checkpoint run did (rank 0 only under torchrun)."""
    if os.environ.get("RANK", "0") == "0":
        changes = ", ".join(f"{k} {a} -> {b}" for k, a, b in plan["config_changes"]) or "nothing"
        exact = sum(b["exact"] for b in plan["blocks"])
        print(f"{args.model}: {len(plan['blocks'])} blocks pruned ({plan['options']['criterion']}), {exact} verified "
              f"exact against their masked originals; config: {changes}; {plan['seconds']} s")
        if plan["head_ratio_note"]:
            print(f"heads: {plan['head_ratio_note']}")
        print(f"written to {args.output} (AutoModelForCausalLM.from_pretrained loads it; the plan is in "
              f"surgery_plan.json)")
    return 0


def _load_weights(model: nn.Module, path: str) -> None:
    """Load a state_dict after checking it whole: a mismatch is named in one line."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CliError(f"--weights {path} holds a {type(state).__name__}, not a state_dict")
    own = model.state_dict()
    wrong = [f"{k} (file {tuple(state[k].shape)}, model {tuple(v.shape)})" for k, v in own.items()
             if isinstance(state.get(k), torch.Tensor) and state[k].shape != v.shape]
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if wrong or missing or unexpected:
        what = wrong[:2] or ([f"missing {missing[:2]}"] if missing else []) + ([f"unexpected {unexpected[:2]}"]
                                                                               if unexpected else [])
        hint = " (a different --num-classes?)" if wrong else ""
        raise CliError(f"--weights {path} does not fit {type(model).__name__}: {'; '.join(what)}{hint}")
    model.load_state_dict(state)


def _calibration(args, shape: tuple):
    """Calibration batches for data criteria from a pipeline dataset, sized to the input shape."""
    from surgery.pipeline.config import DataSection
    from surgery.pipeline.data import load, loader
    if len(shape) != 4 or shape[1] != 3 or shape[2] != shape[3]:
        raise CliError(f"--data needs a square 3-channel --input-shape N,3,S,S, got {','.join(map(str, shape))}")
    data = load(DataSection(name=args.data, root=args.data_root, image_size=shape[2], augment=False), args.seed)
    if args.num_classes is not None and data.num_classes > args.num_classes:
        raise CliError(f"--data {args.data} has {data.num_classes} classes; give --num-classes {data.num_classes}")
    return loader(data.calibration, 32)


if __name__ == "__main__":
    sys.exit(main())
