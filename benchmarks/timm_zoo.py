"""Prunability of every timm family: the smallest model of each module that registers models
that ``surgery.trace`` captures with its default tracer (torch.fx, torch.export, a recorded run), random weights, float64, ``surgery.prune(model, x, ratio=0.5)`` with no
options, as a new user would call it. Run through ``benchmarks/prunability.py --zoo timm``.

Outcome per family:
  exact        pruned, verified against the masked original, and the independent
               value-matching oracle (surgery.testing) agrees
  norm         pruned through a normalisation over channels (LayerNorm, ...): inexact by
               design, warned, output shapes verified
  refused      surgery raised a named error before handing back a model (model untouched)
  untraceable  no front end captures any of the family's three smallest models
  WRONG        a model came back and the independent oracle disagrees: silently wrong
  nothing      traced and verified, but every channel group is frozen
Each model runs in its own process (a crash or a hang cannot take the table down).
"""
from __future__ import annotations

import argparse
import collections
import json
import re
import subprocess
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn as nn

TIMEOUT_S = 300


def candidates(per_family: int = 3) -> dict:
    """{family: [model names, smallest first]} by parameter count on the meta device."""
    import timm
    out = {}
    for family in timm.list_modules():
        sized = []
        for name in timm.list_models(module=family):
            try:
                with warnings.catch_warnings(), torch.device("meta"):
                    warnings.simplefilter("ignore")
                    n = sum(p.numel() for p in timm.create_model(name).parameters())
            except Exception:
                continue
            sized.append((n, name))
        if sized:
            out[family] = [name for _, name in sorted(sized)[:per_family]]
    return out


def one(name: str, ratio: float) -> dict:
    """Prune one timm model; the row of the table (run in a child process)."""
    import timm
    import surgery
    from surgery.metrics import count_params
    from surgery.testing import max_error, randomize
    torch.manual_seed(0)
    warnings.simplefilter("ignore")
    model = randomize(timm.create_model(name, pretrained=False).double().eval(), seed=0)
    size = tuple(model.pretrained_cfg.get("input_size", (3, 224, 224)))
    x = torch.randn(1, *size, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    row = {"model": name, "params": count_params(model), "input": "x".join(map(str, size[1:]))}
    try:
        graph = surgery.trace(model, x)
    except surgery.TraceError as err:
        return {**row, "outcome": "untraceable", "why": str(err).splitlines()[0][:120]}
    row["groups"] = f"{len(graph.prunable_groups)}/{len(graph.groups)}"
    row["frozen"] = frozen_reasons(graph)
    start = time.perf_counter()
    try:
        pruned = surgery.prune(model, x, ratio=ratio)
    except Exception as err:
        return {**row, "outcome": "refused", "why": f"{type(err).__name__}: {str(err).splitlines()[0][:150]}"}
    row["time_s"] = round(time.perf_counter() - start, 2)
    row["params_after"] = count_params(pruned)
    row["class_kept"] = type(pruned) is type(model)
    check = pruned.surgery_verification
    if row["params_after"] == row["params"]:
        return {**row, "outcome": "nothing", "why": "; ".join(check.unchecked)[:120]}
    if not check.exact:
        return {**row, "outcome": "norm", "why": "; ".join(check.unchecked)[:120]}
    rescaled = any(isinstance(m, nn.MultiheadAttention) for m in model.modules())
    try:
        err = None if rescaled else max_error(model, pruned, x)
    except ValueError:  # weights not matchable by value (a rule that rescales): verification decides
        err = None
    row["oracle"] = None if err is None else float(f"{err:.2e}")
    wrong = err is not None and not err < 1e-8
    return {**row, "outcome": "WRONG" if wrong else "exact", "verified": check.max_error}


def frozen_reasons(graph) -> str:
    counts = collections.Counter(re.sub(r" \(node .*|'[^']*'", "", g.reason) for g in graph.groups if not g.prunable)
    return "; ".join(f"{n}x {r.strip()}" for r, n in counts.most_common(2))[:140]


def family_row(family: str, names: list, ratio: float) -> dict:
    row = {}
    for name in names:
        try:
            done = subprocess.run([sys.executable, __file__, "--one", name, "--ratio", str(ratio)],
                                  capture_output=True, text=True, timeout=TIMEOUT_S)
            lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
            row = json.loads(lines[-1]) if lines else {
                "model": name, "outcome": "refused", "why": f"crashed: {(done.stderr.strip().splitlines() or ['?'])[-1][:150]}"}
        except subprocess.TimeoutExpired:
            row = {"model": name, "outcome": "timeout", "why": f"over {TIMEOUT_S} s"}
        if row["outcome"] != "untraceable":
            break
    return {"family": family, **row}


def table(rows: list) -> str:
    head = "| family | model | outcome | params before -> after | groups prunable | time s | detail |"
    lines = [head, "|" + "---|" * 7]
    for r in sorted(rows, key=lambda r: r["family"]):
        params = f"{r['params'] / 1e6:.2f}M -> {r['params_after'] / 1e6:.2f}M" if "params_after" in r else \
            (f"{r['params'] / 1e6:.2f}M" if "params" in r else "")
        detail = r.get("why") or (f"oracle {r['oracle']:.1e}" if r.get("oracle") is not None else "verified") + \
            ("" if r.get("class_kept", True) else "; GraphModule returned")
        lines.append(f"| {r['family']} | {r['model']} | {r['outcome']} | {params} | {r.get('groups', '')} | "
                     f"{r.get('time_s', '')} | {detail.replace('|', '/')} |")
    counts = collections.Counter(r["outcome"] for r in rows)
    lines.append("")
    lines.append(f"{len(rows)} families: " + ", ".join(f"{n} {k}" for k, n in counts.most_common()))
    return "\n".join(lines)


def main(argv: list | None = None) -> None:
    p = argparse.ArgumentParser(description="prunability of every timm family")
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--families", default="", help="comma-separated timm modules (default: all)")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--json", default="", help="also write the rows to this file")
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(one(args.one, args.ratio)))
        return
    import timm
    torch.set_num_threads(1)
    fams = candidates()
    if args.families:
        fams = {f: fams[f] for f in args.families.split(",")}
    print(f"timm {timm.__version__}, torch {torch.__version__}, ratio {args.ratio}, {len(fams)} families",
          file=sys.stderr)
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(lambda kv: family_row(kv[0], kv[1], args.ratio), fams.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    print(table(rows))


if __name__ == "__main__":
    main()
