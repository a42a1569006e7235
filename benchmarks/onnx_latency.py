"""Latency in onnxruntime before and after pruning: torchvision classifiers and whole
detectors, ratio 0.5, L1.

Each model (random weights) and its pruned copy are exported with ``torch.onnx.export``
(opset 17) to a temporary folder, run in onnxruntime on the CPU with ``--threads`` intra-op
threads, and timed (median of ``--repeats`` runs after 5 warm-up runs): classifiers at
batch 1 and 8 on 224x224, detectors on one 3x320x320 image with every score kept (pruned with tracer="run", the
whole model, no ignored layers). The pruned file's outputs are compared with the pruned
torch model's: the largest relative difference for a classifier, for a detector the
detections with no equal one in torch's output, in any order
(``surgery.testing.unmatched_detections``), and how many of those are ties: a
detection with the same label and score in both but another box, a tie among anchors the
two runtimes broke differently.

    python benchmarks/onnx_latency.py [--models resnet18,resnet50,mobilenet_v2]
        [--detectors fasterrcnn_mobilenet_v3_large_320_fpn,retinanet_resnet50_fpn] [--threads 2] [--repeats 30]
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


from surgery.testing import randomize, unmatched_detections

IMAGE = (3, 320, 320)


def export(model: torch.nn.Module, path: str, detector: bool = False) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if detector:
            torch.onnx.export(model, ([torch.rand(*IMAGE)],), path, opset_version=17, dynamo=False,
                              input_names=["x"])
        else:
            torch.onnx.export(model, (torch.randn(1, 3, 224, 224),), path, opset_version=17, dynamo=False,
                              input_names=["x"], dynamic_axes={"x": {0: "batch"}})


def timed(session, x: np.ndarray, repeats: int) -> float:
    for _ in range(5):
        session.run(None, {"x": x})
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, {"x": x})
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def params(model: torch.nn.Module) -> int:
    return sum(q.numel() for q in model.parameters())


def classifier_row(name: str, folder: str, options, repeats: int) -> str:
    import onnxruntime as ort
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
        data = np.random.default_rng(0).standard_normal((batch, 3, 224, 224), dtype=np.float32)
        before, after = (timed(s, data, repeats) for s in sessions)
        cells += [f"{before:.1f}", f"{after:.1f}", f"{before / after:.2f}x"]
    return f"| {name} | {params(model):,} | {params(small):,} | {' | '.join(cells)} | {error:.1e} |"


def detector_row(name: str, folder: str, options, repeats: int) -> str:
    import onnxruntime as ort
    torch.manual_seed(0)
    keep_all = {"box_score_thresh": 0.0} if "rcnn" in name else {"score_thresh": 0.0}  # random weights score low
    model = getattr(torchvision.models.detection, name)(weights=None, weights_backbone=None, **keep_all).eval()
    randomize(model, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        small = surgery.prune(model, ([torch.rand(*IMAGE)],), ratio=0.5, tracer="run")
    paths = [os.path.join(folder, f"{name}-{tag}.onnx") for tag in ("whole", "pruned")]
    export(model, paths[0], detector=True)
    export(small, paths[1], detector=True)
    sessions = [ort.InferenceSession(path, options, providers=["CPUExecutionProvider"]) for path in paths]
    image = torch.rand(*IMAGE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        (want,) = small([image])
    got = dict(zip(want, sessions[1].run(None, {"x": image.numpy()})))  # outputs in the dict's order
    missing = unmatched_detections(want, got) + abs(len(want["scores"]) - len(got["scores"]))
    ties = missing - unmatched_detections(want, got, box_tol=float("inf"))  # an equal score, another anchor
    before, after = (timed(s, image.numpy(), repeats) for s in sessions)
    return (f"| {name} | {params(model):,} | {params(small):,} | {before:.1f} | {after:.1f} | {before / after:.2f}x "
            f"| | | | {missing} of {len(want['scores'])} detections differ" + (f", {ties} of them a tie (same score and "
            "label, another box)" if ties else "") + " |")


def main() -> None:
    import onnxruntime as ort
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="resnet18,resnet50,mobilenet_v2")
    p.add_argument("--detectors", default="fasterrcnn_mobilenet_v3_large_320_fpn,retinanet_resnet50_fpn")
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
        for name in filter(None, args.models.split(",")):
            print(classifier_row(name, folder, options, args.repeats), flush=True)
        for name in filter(None, args.detectors.split(",")):
            print(detector_row(name, folder, options, args.repeats), flush=True)


if __name__ == "__main__":
    main()
