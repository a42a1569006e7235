"""ONNX as an output: a pruned classifier and a pruned whole detector export with torch.onnx and
run in onnxruntime with the pruned model's outputs (YOLO's own export is in test_ultralytics.py)."""
import warnings

import numpy as np
import pytest
import torch
import torchvision

import surgery
from surgery.testing import randomize, unmatched_detections

ort = pytest.importorskip("onnxruntime")


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small"])
def test_a_pruned_classifier_exports_to_onnx_and_matches(tmp_path, name):
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    small = surgery.prune(model, x, ratio=0.5)
    path, whole = tmp_path / f"{name}.onnx", tmp_path / f"{name}-whole.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for net, file in ((small, path), (model, whole)):
            torch.onnx.export(net, (x,), str(file), opset_version=17, dynamo=False,
                              input_names=["x"], dynamic_axes={"x": {0: "batch"}})
    assert path.stat().st_size < 0.6 * whole.stat().st_size  # the file holds the pruned weights
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    other = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    (got,) = session.run(None, {"x": other.numpy()})
    with torch.no_grad():
        want = small(other).numpy()
    assert got.shape == want.shape == (3, 1000)
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def test_a_pruned_detector_exports_to_onnx_and_finds_the_same_detections(tmp_path):
    torch.manual_seed(0)
    model = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None, num_classes=5).eval()
    randomize(model, seed=0)  # random BN statistics: channels differ, so pruning them is visible
    image = torch.rand(3, 240, 320, generator=torch.Generator().manual_seed(1))
    small = surgery.prune(model, ([image],), ratio=0.5, tracer="run")
    assert type(small) is type(model)
    path, whole = tmp_path / "small.onnx", tmp_path / "whole.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for net, file in ((small, path), (model, whole)):
            torch.onnx.export(net, ([image],), str(file), opset_version=17, dynamo=False, input_names=["image"])
    assert path.stat().st_size < 0.4 * whole.stat().st_size
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    other = torch.rand(3, 240, 320, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        (want,), (before,) = small([other]), model([other])
    got = dict(zip(want, session.run(None, {"image": other.numpy()})))  # outputs in the dict's order
    assert len(want["scores"]) == len(got["scores"]) > 50
    assert unmatched_detections(want, got) == 0
    assert unmatched_detections(before, got) > 50  # the comparison tells models apart
