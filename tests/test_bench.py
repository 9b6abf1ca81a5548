"""Benchmark entry points that must behave on this CPU-only machine."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the script measures instead of skipping")
def test_gpu_check_skips_cleanly_without_a_gpu():
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh")], capture_output=True, text=True,
                          timeout=120, env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable})
    assert proc.returncode == 0, proc.stderr
    assert "gpu_check: skipped" in proc.stdout and "== 1/5" not in proc.stdout
    fp16 = subprocess.run([sys.executable, str(ROOT / "bench" / "fp16_skip.py")], capture_output=True, text=True,
                          timeout=120)
    assert fp16.returncode == 0 and "skipped" in fp16.stdout, fp16.stderr
