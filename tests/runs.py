"""`gapt-ds train` runs for the run-directory, resume and checkpoint tests: one 2-rank run that they copy,
torchrun and launcher-less ranks (to see every rank's exit code and output)."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dist import free_port
from test_train import BIN, ROOT, env, metrics, write_ds_config  # noqa: F401  (re-exported)

BASE_STEPS = ("--steps", "8", "--save-every", "4", "--eval-every", "0")


def train_cmd(run_dir: Path, config: Path, cache: Path, *extra: str) -> list[str]:
    return ["--deepspeed_config", str(config), "--data", "arithmetic", "--model", "tiny", "--seq-len", "32",
            "--run-dir", str(run_dir), "--cache-dir", str(cache), "--eval-batches", "1", "--arith-eval", "0",
            "--no-progress", *extra]


def torchrun(args: list[str], timeout: int = 300, nproc: int = 2, **env_extra) -> subprocess.CompletedProcess:
    cmd = [str(BIN / "torchrun"), "--nproc_per_node", str(nproc), "--master_port", str(free_port()), "-m",
           "gapt_ds.train", *args]
    return subprocess.run(cmd, env=env(**env_extra), capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def bare_ranks(args: list[str], world: int = 2, timeout: int = 300) -> list[subprocess.CompletedProcess]:
    """``world`` independent `gapt-ds train` processes (no launcher, nothing kills a rank for another's exit)."""
    port = str(free_port())
    procs = [subprocess.Popen([sys.executable, "-m", "gapt_ds.cli", "train", *args], cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=env(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(world), MASTER_PORT=port,
                                      MASTER_ADDR="127.0.0.1"))
             for r in range(world)]
    outs = [p.communicate(timeout=timeout) for p in procs]
    return [subprocess.CompletedProcess(p.args, p.returncode, o, e) for p, (o, e) in zip(procs, outs)]


def snapshot(run_dir: Path) -> dict[str, str]:
    """Every file under ``run_dir`` with its content hash and mtime."""
    return {str(p.relative_to(run_dir)): f"{hashlib.sha1(p.read_bytes()).hexdigest()}@{p.stat().st_mtime_ns}"
            for p in sorted(run_dir.rglob("*")) if p.is_file()}


class BaseRun:
    """A finished 2-rank ZeRO-1 run (8 steps, checkpoints step4 and step8); ``copy`` gives a test its own."""

    def __init__(self, root: Path) -> None:
        self.root, self.config, self.cache = root, write_ds_config(root / "ds.json"), root / "cache"
        self.run_dir = root / "run"
        proc = torchrun(train_cmd(self.run_dir, self.config, self.cache, *BASE_STEPS))
        assert proc.returncode == 0, proc.stderr[-4000:]
        self.metrics = metrics(self.run_dir)

    def copy(self, dest: Path) -> Path:
        shutil.copytree(self.run_dir, dest)
        return dest

    def cmd(self, run_dir: Path, *extra: str, config: Path = None) -> list[str]:
        return train_cmd(run_dir, config or self.config, self.cache, *extra)


@pytest.fixture(scope="session")
def base_run(tmp_path_factory) -> BaseRun:
    return BaseRun(tmp_path_factory.mktemp("base_run"))
