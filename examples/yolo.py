"""Prune an Ultralytics YOLO detector through its own API: build from yaml (no download, no
warm-up forward, no patch, no ignored layers), prune ``yolo.model`` in place, then predict,
validate on a tiny dataset this script writes, and export to ONNX.

Run: python examples/yolo.py [--cfg yolov8n.yaml] [--ratio 0.5] [--out DIR]
"""
from __future__ import annotations

import argparse
import contextlib
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

import surgery

IMGSZ = 64


def write_dataset(root: Path, images: int = 4, seed: int = 0) -> Path:
    """A YOLO-format dataset (random images, one box each, 2 classes) and its data.yaml."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(images):
            Image.fromarray(rng.integers(0, 255, (IMGSZ, IMGSZ, 3), dtype=np.uint8)).save(
                root / "images" / split / f"{i}.jpg")
            cx, cy, w, h = rng.uniform(0.3, 0.7, 2).tolist() + rng.uniform(0.1, 0.3, 2).tolist()
            (root / "labels" / split / f"{i}.txt").write_text(f"{i % 2} {cx:.4f} {cy:.4f} {w:.4f} {h:.4f}\n")
    data = root / "data.yaml"
    data.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n  0: a\n  1: b\n")
    return data


def main(cfg: str = "yolov8n.yaml", ratio: float = 0.5, out: str | None = None) -> dict:
    from ultralytics import YOLO
    torch.manual_seed(0)
    folder = Path(out or tempfile.mkdtemp(prefix="surgery-yolo-"))
    yolo = YOLO(cfg)
    before = sum(p.numel() for p in yolo.model.parameters())
    x = torch.rand(1, 3, IMGSZ, IMGSZ)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        small = surgery.prune(yolo.model.eval(), x, ratio=ratio, inplace=True)  # yolo.model itself is edited
    after = sum(p.numel() for p in small.parameters())
    predicted = yolo.predict(np.zeros((IMGSZ, IMGSZ, 3), dtype=np.uint8), imgsz=IMGSZ, verbose=False, save=False)
    metrics = yolo.val(data=str(write_dataset(folder / "data")), imgsz=IMGSZ, batch=2, workers=0, plots=False,
                       verbose=False, project=str(folder), name="val")
    with contextlib.chdir(folder):  # a model built from yaml exports next to its (relative) file name
        onnx_path = str(folder / yolo.export(format="onnx", imgsz=IMGSZ, simplify=False, dynamic=False,
                                             verbose=False))
    import onnxruntime as ort
    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    ours = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        theirs = small.eval()(x)
    theirs = (theirs[0] if isinstance(theirs, (tuple, list)) else theirs).numpy()
    return {"params": (before, after), "verification": str(small.surgery_verification),
            "predicted": len(predicted), "map50": float(metrics.box.map50), "onnx": onnx_path,
            "onnx_max_error": float(np.abs(ours - theirs).max() / np.abs(theirs).max())}


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cfg", default="yolov8n.yaml")
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--out")
    args = p.parse_args()
    for key, value in main(args.cfg, args.ratio, args.out).items():
        print(f"{key:>15}: {value}")
