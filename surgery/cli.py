"""The surgery command line: inspect the channel groups of a model, or prune it.

Examples:
  surgery inspect resnet20
  surgery prune torchvision:resnet18 --ratio 0.5 --input-shape 1,3,224,224 --output small.pt
  surgery prune my_pkg.nets:build --weights trained.pt --target-flops 0.5
  surgery prune resnet20 --criterion taylor --data digits

MODEL is a name from models.create (resnet20, vgg16_bn, ...), torchvision:NAME, timm:NAME,
or module:function / path/to/file.py:function returning an nn.Module (called with
num_classes=N when it accepts it). --weights loads a state_dict (weights_only=True).
"""
from __future__ import annotations

import argparse
import sys
import warnings

import torch
import torch.nn as nn

__all__ = ["main", "build_model"]

VERSION = "0.1.0"


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


def build_model(spec: str, num_classes: int) -> nn.Module:
    """The model named by ``spec`` (see the module docstring), random weights."""
    from surgery.architectures import build
    try:
        return build(spec, num_classes=num_classes)
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


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="surgery", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"torch-surgery {VERSION}")
    sub = p.add_subparsers(dest="command", required=True, metavar="{inspect,prune}")
    for name, text in (("inspect", "print the channel groups (prunable or frozen, and why)"),
                       ("prune", "prune, verify, print the cost before and after, optionally save")):
        s = sub.add_parser(name, help=text, description=text)
        s.add_argument("model", help="models.create name, torchvision:NAME, timm:NAME or module:function")
        s.add_argument("--input-shape", type=_shape, default=(1, 3, 32, 32), help="default 1,3,32,32")
        s.add_argument("--num-classes", type=int, default=10)
        s.add_argument("--weights", help="a state_dict file to load into the model first")
        s.add_argument("--seed", type=int, default=0, help="seeds random weights and inputs (default 0)")
    pr = sub.choices["prune"]
    pr.add_argument("--ratio", type=float, default=0.5,
                    help="fraction of each channel group's channels to remove (default 0.5)")
    pr.add_argument("--criterion", default="l1", help="a criteria name (l1, fpgm, taylor, ...)")
    pr.add_argument("--global", dest="global_pruning", action="store_true", help="rank channels across groups")
    pr.add_argument("--target-flops", type=float, help="fraction of FLOPs to keep (instead of --ratio)")
    pr.add_argument("--iterative-steps", type=int, default=1)
    pr.add_argument("--round-to", type=int, help="kept channel counts are multiples of N")
    pr.add_argument("--ignore", action="append", default=[], metavar="LAYER", help="keep this layer's outputs whole")
    pr.add_argument("--data", choices=["digits"], help="calibration data for data criteria (bundled, offline)")
    pr.add_argument("--max-batches", type=int, default=8)
    pr.add_argument("--output", help="save the pruned model (plans + weights, surgery.save) to this file")
    return p


def main(argv: list | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except CliError as err:
        print(f"surgery: error: {err}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, RuntimeError) as err:  # library errors already say what to do
        print(f"surgery: error: {type(err).__name__}: {err}", file=sys.stderr)
        return 2


def _run(args) -> int:
    import surgery  # imported here so that `surgery --help` does not load the engine
    torch.manual_seed(args.seed)
    model = build_model(args.model, args.num_classes).eval()
    if args.weights:
        model.load_state_dict(torch.load(args.weights, map_location="cpu", weights_only=True))
    x = torch.randn(*args.input_shape, generator=torch.Generator().manual_seed(args.seed))
    if args.command == "inspect":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            print(surgery.trace(model, x).summary())
        return 0
    return _prune(surgery, model, x, args)


def _prune(surgery, model: nn.Module, x: torch.Tensor, args) -> int:
    from surgery.metrics import count_flops, count_params
    options = dict(ratio=args.ratio, criterion=args.criterion, global_pruning=args.global_pruning,
                   target_flops=args.target_flops, iterative_steps=args.iterative_steps, round_to=args.round_to,
                   ignored_layers=tuple(args.ignore))
    data = _digits_batches(x.shape, args.num_classes, args.seed) if args.data else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner = surgery.Pruner(model, x, data=data, max_batches=args.max_batches if data else None, **options)
        pruned = pruner.run()
    rows = [("params", count_params(model), count_params(pruned)),
            ("FLOPs", count_flops(model, x), count_flops(pruned, x))]
    what = (f"kept {args.target_flops:.0%} of FLOPs" if args.target_flops else
            f"removed {args.ratio:.0%} of {'all channels, ranked globally' if args.global_pruning else 'each group' + chr(39) + 's channels'}")
    print(f"{args.model}: {what} ({args.criterion}); {pruner.verification}")
    print(f"{'':8}{'before':>14}{'after':>14}{'kept':>8}")
    for name, a, b in rows:
        print(f"{name:8}{a:>14,}{b:>14,}{b / a:>8.1%}")
    if args.output:
        surgery.save(pruned, args.output, architecture={"name": args.model, "num_classes": args.num_classes})
        print(f"saved to {args.output} (surgery.load({args.output!r}) rebuilds it)")
    return 0


def _digits_batches(shape: tuple, num_classes: int, seed: int, batch: int = 32) -> list:
    """scikit-learn's bundled digits resized to the input shape, as (images, labels) batches."""
    from sklearn.datasets import load_digits
    import torch.nn.functional as F
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 8.0 - 1.0
    c, size = shape[1], tuple(shape[2:])
    if len(size) != 2:
        raise CliError("--data digits needs a 4-D --input-shape (N,C,H,W)")
    images = F.interpolate(images, size=size, mode="bilinear", align_corners=False).repeat(1, c, 1, 1)
    labels = torch.tensor(digits.target) % num_classes
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    return [(images[i], labels[i]) for i in order.split(batch)]


if __name__ == "__main__":
    sys.exit(main())
