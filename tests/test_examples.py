"""examples/: the custom DeepSpeed loop under the deepspeed launcher and the Hugging Face Trainer example under
torchrun, on tiny sizes, as a user runs them."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from tbparse import SummaryReader

from dist import free_port

pytestmark = pytest.mark.distributed
ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def run(cmd: list[str], cwd: Path) -> str:
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=cwd)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    return out


def test_custom_loop_under_the_deepspeed_launcher(tmp_path):
    out = run(["deepspeed", "--num_gpus", "2", "--master_port", str(free_port()),
               str(ROOT / "examples" / "custom_loop.py"), "--steps", "10", "--layers", "3"], cwd=tmp_path)
    assert "step 10: phase 1, CE" in out and "done: 10 steps" in out
    assert "deepspeed_shm_comm" not in out  # initialize skipped the CPU shm op build (and announced no build)
    assert "no enabled \"tensorboard\" block" not in out  # the example's config has one
    tags = set(SummaryReader(str(tmp_path / "runs" / "custom_loop")).scalars.tag)
    assert {"gapt/ce", "gapt/phase", "gapt/mbe/layer_1"} <= tags


def test_hf_trainer_example_under_torchrun(tmp_path):
    out = run([str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port()),
               str(ROOT / "examples" / "hf_trainer.py"), "--steps", "4", "--layers", "3", "--out", "hf"], cwd=tmp_path)
    assert "step 4: phase 1, CE" in out
    assert (tmp_path / "hf" / "checkpoint-4" / "global_step4").is_dir()
    tags = set(SummaryReader(str(tmp_path / "hf" / "runs")).scalars.tag)
    assert {"gapt/ce", "gapt/phase", "gapt/mbe/layer_1"} <= tags
