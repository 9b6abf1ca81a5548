"""Checkpoints are read without running code from them: a crafted pickle is refused by name, by `gapt-ds
export` and by `--resume`, before anything unpickles it for real."""

import os
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from gapt_ds.safe_load import safe_load
from runs import ROOT, bare_ranks, env


class Payload:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_safe_load_reads_checkpoint_types_and_refuses_everything_else(tmp_path):
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum

    ok = {"t": torch.arange(3), "rng": np.random.get_state(), "scaler": LossScaler(1.0), "stage": ZeroStageEnum(2)}
    torch.save(ok, tmp_path / "ok.pt")
    back = safe_load(tmp_path / "ok.pt")
    assert back["stage"] == ZeroStageEnum(2) and back["scaler"].cur_scale == 1.0
    assert np.array_equal(back["rng"][1], ok["rng"][1])

    marker = tmp_path / "ran"
    torch.save({"module": {}, "x": Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match=r"refusing to load .*evil\.pt: it references posix\.system"):
        safe_load(tmp_path / "evil.pt")
    with open(tmp_path / "legacy.pt", "wb") as f:  # a plain pickle, not a torch zip file
        pickle.dump({"x": Payload(marker)}, f)
    with pytest.raises(ValueError, match=r"refusing to load .*legacy\.pt"):
        safe_load(tmp_path / "legacy.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "ok.pt").read_bytes()[:100])
    with pytest.raises(ValueError, match=r"cannot read .*cut\.pt: it is truncated or corrupt"):
        safe_load(tmp_path / "cut.pt")
    assert not marker.exists()


def export(ckpt_dir, out) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gapt_ds.cli", "export", str(ckpt_dir), str(out)], env=env(),
                          capture_output=True, text=True, timeout=240, cwd=ROOT)


@pytest.mark.distributed
def test_a_crafted_checkpoint_never_runs_code_in_export_or_resume(base_run, tmp_path):
    run = base_run.copy(tmp_path / "run")
    tag = run / "checkpoints" / "step8"
    marker = tmp_path / "pwned"
    model_states = tag / "mp_rank_00_model_states.pt"
    torch.save({"module": {}, "gapt_run": Payload(marker)}, model_states)
    proc = export(run / "checkpoints", tmp_path / "hf")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"refusing to load {model_states}: it references posix.system" in proc.stderr
    assert not marker.exists() and not (tmp_path / "hf").exists()

    ranks = bare_ranks(base_run.cmd(run, "--steps", "10", "--resume"))
    assert [r.returncode for r in ranks] == [2, 2], ranks[0].stderr[-3000:]
    assert f"refusing to load {model_states}" in ranks[0].stderr and "refusing" not in ranks[1].stderr
    assert not marker.exists()

    # DeepSpeed's zero_to_fp32 unpickles the optimizer partitions with weights_only=False: checked first
    shutil.copyfile(base_run.run_dir / "checkpoints" / "step8" / model_states.name, model_states)
    optim = next(tag.glob("zero_pp_rank_1_*optim_states.pt"))
    torch.save({"optimizer_state_dict": Payload(marker)}, optim)
    proc = export(run / "checkpoints", tmp_path / "hf")
    assert proc.returncode == 2 and f"refusing to load {optim}" in proc.stderr, proc.stderr[-3000:]
    assert not marker.exists()
