"""surgery.prune against Torch-Pruning (graph build + prune), side by side in one process.

torchvision models at 224x224, ratio 0.5 of each group's channels, L1 magnitude, float32,
median of N runs on fresh copies, the three timed in turn each round (interleaved). Python's
garbage collector runs (untimed) after each fresh copy is made and before its timed call: the
copies this script makes would otherwise trigger full collections (about 150 ms each in this
process) that land on whichever call comes next, the same one round after round. Torch-Pruning
is an optional benchmark dependency (``pip install torch-pruning``); the library never imports it.

    python benchmarks/vs_torch_pruning.py [--models resnet50,...] [--repeats 3] [--threads 2]
"""
from __future__ import annotations

import argparse
import copy
import gc
import statistics
import time
import warnings

import torch
import torchvision

import surgery

MODELS = "resnet50,vgg16_bn,densenet121,mobilenet_v2,efficientnet_b0,regnet_y_400mf,convnext_tiny,wide_resnet50_2"


def _tp(model, x):
    import torch_pruning as tp
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    pruner = tp.pruner.MetaPruner(model, x, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=0.5,
                                  ignored_layers=[last])
    pruner.step()
    return model


def _ours(verify):
    return lambda model, x: surgery.prune(model, x, ratio=0.5, verify=verify, inplace=True)


def _interleaved(fns: list, model, x, repeats: int) -> list:
    """[(median seconds, last result)] per function, the functions run in turn each round (so
    a busy moment slows all of them alike), each on a fresh copy."""
    times, results = [[] for _ in fns], [None] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            fresh = copy.deepcopy(model)
            gc.collect()
            t0 = time.perf_counter()
            results[i] = fn(fresh, x)
            times[i].append(time.perf_counter() - t0)
    return [(statistics.median(ts), r) for ts, r in zip(times, results)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=MODELS)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    print("| model | Torch-Pruning s | ours s (verify off) | ours / TP | ours s (verify on) | params kept TP / ours |")
    print("|---|---:|---:|---:|---:|---:|")
    ratios, ratios_on = [], []
    for name in args.models.split(","):
        torch.manual_seed(0)
        model, x = torchvision.models.get_model(name, weights=None).eval(), torch.randn(1, 3, 224, 224)
        n0 = sum(q.numel() for q in model.parameters())
        (t_tp, m_tp), (t_off, m_off), (t_on, _) = _interleaved([_tp, _ours(False), _ours(True)], model, x,
                                                               args.repeats)
        ratios.append(t_off / t_tp)
        ratios_on.append(t_on / t_tp)
        kept = [sum(q.numel() for q in m.parameters()) / n0 for m in (m_tp, m_off)]
        print(f"| {name} | {t_tp:.2f} | {t_off:.2f} | {t_off / t_tp:.2f} | {t_on:.2f} | "
              f"{kept[0]:.1%} / {kept[1]:.1%} |", flush=True)
    print(f"\nours / TP, verify off: median {statistics.median(ratios):.2f}, worst {max(ratios):.2f}")
    print(f"ours / TP, verify on: median {statistics.median(ratios_on):.2f}, worst {max(ratios_on):.2f}")


if __name__ == "__main__":
    main()
