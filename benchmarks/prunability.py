"""Prunability of every torchvision classification model (or --models a,b).

One row per model: channel groups and how many are prunable (frozen ones summarised by
reason), trace and prune time (float32, CPU), params and fvcore FLOPs before/after at
ratio 0.5, the class returned, and whether the exactness oracle holds (float64, random
weights and BN statistics; "n/a" for LayerNorm/GroupNorm models, where it does not apply).

    python benchmarks/prunability.py [--models resnet18,vit_b_16] [--ratio 0.5] [--markdown]
    python benchmarks/prunability.py --zoo timm [--families resnet,byobnet] [--jobs 2]

``--zoo timm`` runs benchmarks/timm_zoo.py: the smallest fx-traceable model of every timm family.
"""
from __future__ import annotations

import argparse
import collections
import copy
import re
import sys
import time
import warnings

import torch
import torch.nn as nn
import torchvision

import surgery
from surgery import testing as oracle
from surgery.metrics import count_flops, count_params

FIXED = {"vit": 224, "swin": 224, "maxvit": 224, "inception_v3": 96}
KWARGS = {"googlenet": {"aux_logits": False, "init_weights": False},
          "inception_v3": {"aux_logits": False, "init_weights": False}}
ORACLE_MAX_PARAMS = 150e6  # float64 copies of larger models do not fit this machine's 24 GB


def input_size(name: str) -> int:
    return next((v for k, v in FIXED.items() if name.startswith(k)), 64)


def has_cross_channel_norm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.LayerNorm) or (isinstance(m, nn.GroupNorm) and m.num_groups == 1)
               for m in model.modules())


def reasons(graph) -> str:
    counts = collections.Counter(re.sub(r" \(node .*", "", g.reason) for g in graph.groups if not g.prunable)
    return "; ".join(f"{n}x {r}" for r, n in counts.most_common(3))


def exactness(name: str, model: nn.Module, size: int, ratio: float) -> str:
    if has_cross_channel_norm(model):
        return "n/a"
    if count_params(model) > ORACLE_MAX_PARAMS:
        return "not run (size)"
    m = oracle.randomize(copy.deepcopy(model).double().eval(), 0)
    x = torch.randn(2, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    err = oracle.max_error(m, surgery.prune(m, x, ratio=ratio), x)
    return "yes" if err < 1e-9 else f"NO ({err:.1e})"


def row(name: str, ratio: float) -> dict:
    model = torchvision.models.get_model(name, weights=None, **KWARGS.get(name, {})).eval()
    size = input_size(name)
    x = torch.randn(1, 3, size, size)
    t = time.perf_counter()
    graph = surgery.trace(model, x)
    t_trace = time.perf_counter() - t
    t = time.perf_counter()
    pruned = surgery.prune(model, x, ratio=ratio)
    t_prune = time.perf_counter() - t
    with torch.no_grad():
        forward_ok = pruned.eval()(x).shape == model(x).shape
    return dict(model=name, input=size, groups=len(graph.groups), prunable=len(graph.prunable_groups),
                trace=t_trace, prune=t_prune, params=(count_params(model), count_params(pruned)),
                flops=(count_flops(model, x), count_flops(pruned, x)), forward=forward_ok,
                cls="GraphModule" if isinstance(pruned, torch.fx.GraphModule) else "kept",
                exact=exactness(name, model, size, ratio),
                frozen=reasons(graph))


def fmt(r: dict, markdown: bool) -> str:
    p0, p1 = r["params"]
    f0, f1 = r["flops"]
    cells = [r["model"], str(r["input"]), f"{r['prunable']}/{r['groups']}", f"{r['trace']:.2f}", f"{r['prune']:.2f}",
             f"{p0 / 1e6:.2f}M -> {p1 / 1e6:.2f}M", f"{f0 / 1e6:.0f}M -> {f1 / 1e6:.0f}M",
             "yes" if r["forward"] else "NO", r["cls"], r["exact"], r["frozen"] or "-"]
    return ("| " + " | ".join(cells) + " |") if markdown else "  ".join(cells)


def main() -> None:
    if "--zoo" in sys.argv:
        i = sys.argv.index("--zoo")
        zoo = sys.argv[i + 1] if i + 1 < len(sys.argv) else ""
        if zoo == "timm":
            import timm_zoo
            return timm_zoo.main(sys.argv[1:i] + sys.argv[i + 2:])
        if zoo != "torchvision":
            raise SystemExit(f"--zoo must be torchvision or timm, got {zoo!r}")
        del sys.argv[i:i + 2]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--zoo", default="torchvision", choices=["torchvision", "timm"])
    p.add_argument("--models", default=None)
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--markdown", action="store_true")
    args = p.parse_args()
    names = args.models.split(",") if args.models else torchvision.models.list_models(module=torchvision.models)
    head = ["model", "input", "prunable/groups", "trace s", "prune s", "params", "FLOPs", "forward",
            "class", "exact", "frozen groups (top reasons)"]
    print(("| " + " | ".join(head) + " |\n|" + "---|" * len(head)) if args.markdown else "  ".join(head))
    torch.manual_seed(0)
    for name in names:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                print(fmt(row(name, args.ratio), args.markdown), flush=True)
            except Exception as err:  # report, keep going
                print(f"| {name} | ERROR {type(err).__name__}: {str(err)[:200]} |", flush=True)


if __name__ == "__main__":
    main()
