"""Examples run; README, CI and the package agree."""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "examples"))


def test_quickstart_prunes_and_fine_tunes():
    import quickstart
    result = quickstart.main(["--epochs", "1", "--ratio", "0.5"])
    (p0, p1), (f0, f1) = result["params"], result["flops"]
    assert p1 < 0.5 * p0 and f1 < 0.5 * f0
    assert 0.0 <= min(result["accuracy"]) and max(result["accuracy"]) <= 1.0


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Quick start\n\n```bash\n(.*?)```", readme, re.S).group(1).strip().splitlines()
    assert len(block) == 2, "the quick start is exactly two commands"
    assert block[1].startswith('pip install -e ".[test]" && ')
    ci = (ROOT / ".ci" / "run").read_text()
    assert "grep -m1 -E '^pip install -e \"\\.\\[test\\]\" && ' README.md" in ci


def test_cli_inspect_and_prune():
    out = subprocess.run([sys.executable, "-m", "surgery.cli", "prune", "resnet20", "--ratio", "0.5"],
                         capture_output=True, text=True, check=True, cwd=ROOT).stdout
    kept = re.search(r"params\s+([\d,]+)\s+([\d,]+)", out)
    before, after = (int(g.replace(",", "")) for g in kept.groups())
    assert after < before
    out = subprocess.run([sys.executable, "-m", "surgery.cli", "inspect", "resnet20"],
                         capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert "prunable" in out


def test_criteria_do_not_load_the_engine():
    code = ("import sys, criteria; engine = [m for m in ('surgery.pruner', 'surgery.capture.fx', 'surgery.rewrite.rebuild') "
            "if m in sys.modules]; assert not engine, engine")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
