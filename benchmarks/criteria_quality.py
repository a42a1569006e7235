"""Criteria quality on digits: every criterion at three ratios with three seeds, through the
pipeline (train once per seed, prune, fine-tune, evaluate). Prints the markdown table that
BENCHMARKS.md quotes (mean ± standard deviation over seeds) and writes the sweep files.

    python benchmarks/criteria_quality.py [--ratios 0.3,0.5,0.7] [--seeds 0,1,2] [--out runs/criteria-quality]
"""
from __future__ import annotations

import argparse
import time

import criteria
from surgery.pipeline import resolve
from surgery.pipeline.sweep import plot, sweep, table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ratios", default="0.3,0.5,0.7")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--criteria", default=",".join(criteria.available()))
    p.add_argument("--out", default="runs/criteria-quality")
    args = p.parse_args()
    cfg = resolve(env={})
    ratios, seeds = [float(r) for r in args.ratios.split(",")], [int(s) for s in args.seeds.split(",")]
    rows, failed, t0 = [], {}, time.perf_counter()
    for name in args.criteria.split(","):
        try:
            rows += sweep(cfg, criteria=[name], ratios=ratios, seeds=seeds, out=f"{args.out}/{name}").rows
        except Exception as err:  # one criterion's failure is a result too
            failed[name] = f"{type(err).__name__}: {err}"
    print(table(rows))
    for name, why in failed.items():
        print(f"failed: {name}: {why}")
    plot(rows, f"{args.out}/criteria_quality.png")
    print(f"{len(rows)} runs in {time.perf_counter() - t0:.0f} s; plot: {args.out}/criteria_quality.png")


if __name__ == "__main__":
    main()
