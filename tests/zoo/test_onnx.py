"""ONNX as an output: a pruned classifier exports with torch.onnx and runs in onnxruntime with
the pruned model's outputs (YOLO's own export is in test_ultralytics.py)."""
import warnings

import numpy as np
import pytest
import torch
import torchvision

import surgery

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
