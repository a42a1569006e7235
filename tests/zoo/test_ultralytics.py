"""Ultralytics YOLO through its own API: built from yaml, pruned with defaults (no warm-up, no
patch, no ignored layers), then predict, val on a dataset the test writes, ONNX export equal
to the pruned torch model in onnxruntime."""
import os
import sys
from pathlib import Path

import pytest

pytest.importorskip("ultralytics")
pytest.importorskip("onnxruntime")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))


@pytest.mark.parametrize("cfg", ["yolov8n.yaml", "yolo11n.yaml"])
def test_yolo_prunes_exactly_and_its_own_api_still_works(tmp_path, cfg):
    import yolo
    result = yolo.main(cfg, 0.5, str(tmp_path))
    before, after = result["params"]
    assert after < 0.35 * before  # Torch-Pruning keeps 32.4% (v8n) / 31.4% (11n) at the same ratio
    assert result["verification"].startswith("verified: pruned == masked original")
    assert result["predicted"] == 1 and 0.0 <= result["map50"] <= 1.0
    assert os.path.isfile(result["onnx"]) and Path(result["onnx"]).is_relative_to(tmp_path)
    assert result["onnx_max_error"] < 1e-4
