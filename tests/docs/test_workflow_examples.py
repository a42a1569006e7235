"""Each earlier tool's workflow as an example script, run at tiny scale."""
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "examples"))


def test_coverage_with_adaptive_iterative_steps_and_a_report(tmp_path):
    import coverage_adaptive
    m = coverage_adaptive.main(["--steps", "2", "--epochs", "1", "--out", str(tmp_path / "cov")])
    assert [s["step"] for s in m["steps"]] == [1, 2]
    assert m["steps"][1]["flops"] < m["steps"][0]["flops"] < 1.0
    assert (tmp_path / "cov" / "report.pdf").exists()


def test_presets_dry_run_and_gradual_schedule(capsys):
    import presets_dry_run_gradual
    history = presets_dry_run_gradual.main(["--steps", "2", "--epochs", "1"])
    assert [h[0] for h in history] == [1, 2] and history[1][1] < history[0][1]
    out = capsys.readouterr().out
    assert "preset balanced: keep 50% of FLOPs" in out and "total" in out


def test_vgg_layer_by_layer_with_l1_kmeans_and_taylor():
    import vgg_layer_by_layer_criteria as example
    out = example.main(["--model", "vgg11_bn", "--ratio", "0.25", "--batches", "1"])
    full = [64, 128, 256, 256, 512, 512, 512, 512]
    for criterion in ("l1", "kmeans", "taylor"):
        assert out[criterion] == [c - c // 4 for c in full], criterion


def test_class_aware_ocap_on_a_class_subset(tmp_path):
    import class_aware_ocap
    m = class_aware_ocap.main(["--classes", "1,4", "--ratio", "0.5", "--epochs", "1", "--out", str(tmp_path / "o")])
    assert len(m["pruned"]["per_class_accuracy"]) == 2 and m["class_names"] == ["1", "4"]
    assert m["pruned"]["params"] < 0.5 * m["original"]["params"]  # target mode removes the ratio


def test_channel_vs_kernel_vs_intra_kernel(tmp_path):
    import channel_kernel_intra
    r = channel_kernel_intra.main(["--ratio", "0.5", "--epochs", "1", "--plot", str(tmp_path / "c.png")])
    assert set(r) == {"unpruned", "channel", "kernel", "intra-kernel"}
    assert r["channel"][1] < r["kernel"][1] < r["unpruned"][1] and r["intra-kernel"][1] < r["unpruned"][1]
    assert (tmp_path / "c.png").stat().st_size > 10_000
