"""``surgery`` command line: inspect the channel groups of a model, or prune it.

    surgery inspect resnet20
    surgery prune torchvision:resnet18 --ratio 0.5 --input-shape 1,3,224,224
"""
from __future__ import annotations

import argparse
import sys
import warnings

import torch
import torch.nn as nn

__all__ = ["main", "build_model"]


def build_model(spec: str, num_classes: int) -> nn.Module:
    """``name`` from :mod:`models`, or ``torchvision:name`` (random weights)."""
    if spec.startswith("torchvision:"):
        import torchvision
        name = spec.split(":", 1)[1]
        if name not in torchvision.models.list_models(module=torchvision.models):
            raise SystemExit(f"unknown torchvision model {name!r}")
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    import models
    try:
        return models.create(spec, num_classes=num_classes)
    except ValueError as err:
        raise SystemExit(str(err)) from None


def _shape(text: str) -> tuple:
    try:
        return tuple(int(s) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--input-shape must look like 1,3,32,32, got {text!r}")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="surgery", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("inspect", "prune"):
        s = sub.add_parser(name)
        s.add_argument("model", help="a models.create name or torchvision:<name>")
        s.add_argument("--input-shape", type=_shape, default=(1, 3, 32, 32))
        s.add_argument("--num-classes", type=int, default=10)
    pr = sub.choices["prune"]
    pr.add_argument("--ratio", type=float, default=0.5)
    pr.add_argument("--criterion", default="l1")
    return p


def main(argv: list | None = None) -> int:
    args = _parser().parse_args(argv)
    model = build_model(args.model, args.num_classes).eval()
    x = torch.randn(*args.input_shape)
    import surgery  # imported here so that `surgery --help` does not load the engine
    from surgery.metrics import count_flops, count_params
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if args.command == "inspect":
            print(surgery.trace(model, x).summary())
            return 0
        pruned = surgery.prune(model, x, ratio=args.ratio, criterion=args.criterion)
    rows = [("params", count_params(model), count_params(pruned)),
            ("FLOPs", count_flops(model, x), count_flops(pruned, x))]
    print(f"{'':8}{'before':>14}{'after':>14}{'kept':>8}")
    for name, a, b in rows:
        print(f"{name:8}{a:>14,}{b:>14,}{b / a:>8.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
