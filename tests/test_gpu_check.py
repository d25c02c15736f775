"""benchmarks/gpu_check.sh --dry-run: the GPU script's checks at CPU sizes, so the script a lent GPU
machine runs as is (no internet, one try) is known to work before it gets there. Slow: 2 to 3.5
minutes on 2 CPU cores (the dtype tests, the FLOP count on the meta device, the drift cases)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_dry_run(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable}
    out = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--dry-run", str(tmp_path)], env=env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["dry_run"] is True and report["device"] == "cpu"
    checks = report["checks"]
    assert {"tests", "warn_ops", "backbone_step", "full_size", "decode_drift"} <= set(checks)
    assert all(c["rc"] == 0 for c in checks.values()), {k: c["rc"] for k, c in checks.items()}
    assert checks["full_size"]["result"]["full_size"]["bit_exact"] is True
    assert all(ops == [] for ops in checks["warn_ops"]["result"]["ops_that_warn"].values())
    assert checks["backbone_step"]["result"]["tflops_per_call"]["sd15"] > 1  # the real UNet at 768x512
    assert checks["decode_drift"]["result"]["desyncs"] == 0
