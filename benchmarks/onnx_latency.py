"""Latency in onnxruntime before and after pruning: torchvision classifiers, ratio 0.5, L1.

Each model (random weights) and its pruned copy are exported with ``torch.onnx.export``
(opset 17) to a temporary folder, run in onnxruntime on the CPU with ``--threads`` intra-op
threads, and timed at batch 1 and 8 (median of ``--repeats`` runs after 5 warm-up runs).
The pruned file's outputs are compared with the pruned torch model's.

    python benchmarks/onnx_latency.py [--models resnet18,resnet50,mobilenet_v2] [--threads 2] [--repeats 30]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings

import numpy as np
import torch
import torchvision

import surgery


def export(model: torch.nn.Module, path: str) -> None:
    x = torch.randn(1, 3, 224, 224)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), path, opset_version=17, dynamo=False, input_names=["x"],
                          dynamic_axes={"x": {0: "batch"}})


def timed(session, batch: int, repeats: int) -> float:
    x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224), dtype=np.float32)
    for _ in range(5):
        session.run(None, {"x": x})
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, {"x": x})
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    import onnxruntime as ort
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="resnet18,resnet50,mobilenet_v2")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=30)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    print(f"onnxruntime {ort.__version__}, CPU, {args.threads} threads; ratio 0.5, L1\n")
    print("| model | params | pruned params | batch 1 ms | pruned | speed-up | batch 8 ms | pruned | speed-up | "
          "ONNX vs torch |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models.split(","):
            torch.manual_seed(0)
            model = torchvision.models.get_model(name, weights=None).eval()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                small = surgery.prune(model, torch.randn(1, 3, 224, 224), ratio=0.5)
            paths = [os.path.join(folder, f"{name}-{tag}.onnx") for tag in ("whole", "pruned")]
            export(model, paths[0])
            export(small, paths[1])
            sessions = [ort.InferenceSession(path, options, providers=["CPUExecutionProvider"]) for path in paths]
            x = torch.randn(2, 3, 224, 224)
            with torch.no_grad():
                want = small(x).numpy()
            error = np.abs(sessions[1].run(None, {"x": x.numpy()})[0] - want).max() / np.abs(want).max()
            cells = []
            for batch in (1, 8):
                before, after = (timed(s, batch, args.repeats) for s in sessions)
                cells += [f"{before:.1f}", f"{after:.1f}", f"{before / after:.2f}x"]
            counts = [sum(q.numel() for q in m.parameters()) for m in (model, small)]
            print(f"| {name} | {counts[0]:,} | {counts[1]:,} | {' | '.join(cells)} | {error:.1e} |", flush=True)


if __name__ == "__main__":
    main()
