"""Checkpoints are complete or ignored: the completion marker, `latest` moving only after it, the fallback
to the newest complete tag, and a full disk during a save (injected on one rank) losing nothing."""

import json
import os
import subprocess

import pytest

from gapt_ds import checkpoint
from runs import ROOT, BASE_STEPS, metrics, torchrun


def make_tags(ckpt_dir, complete=(), incomplete=(), latest=None):
    for step in complete:
        (ckpt_dir / f"step{step}").mkdir(parents=True)
        (ckpt_dir / f"step{step}" / checkpoint.COMPLETE).write_text(json.dumps({"step": step}))
    for step in incomplete:
        (ckpt_dir / f"step{step}").mkdir(parents=True)
    if latest is not None:
        (ckpt_dir / "latest").write_text(latest)


@pytest.mark.parametrize("latest, problem", [
    ("step30", "'latest' names step30, which is incomplete"),
    ("", "the 'latest' file .* is empty"),
    (None, "has no 'latest' file"),
    ("step99", "'latest' names step99, which does not exist"),
])
def test_a_bad_latest_falls_back_to_the_newest_complete_tag_naming_both(tmp_path, latest, problem):
    make_tags(tmp_path, complete=(5, 10, 20), incomplete=(30,), latest=latest)
    with pytest.warns(UserWarning, match=f"{problem}.*; using step20, the newest complete checkpoint"):
        assert checkpoint.tag_directory(tmp_path) == tmp_path / "step20"


def test_no_complete_tag_and_incomplete_named_tags_are_errors(tmp_path):
    make_tags(tmp_path, incomplete=(4,), latest="")
    with pytest.raises(ValueError, match=r"the 'latest' file .* is empty, and .* holds no complete checkpoint"):
        checkpoint.tag_directory(tmp_path)
    with pytest.raises(ValueError, match="step4 is incomplete"):
        checkpoint.tag_directory(tmp_path, "step4")
    make_tags(tmp_path, complete=(2,))
    assert checkpoint.tag_directory(tmp_path, "step2") == tmp_path / "step2"
    (tmp_path / "latest").write_text("step2\n")
    assert checkpoint.tag_directory(tmp_path) == tmp_path / "step2"


@pytest.mark.distributed
def test_a_full_disk_during_a_save_keeps_the_previous_checkpoint_resumable(base_run, tmp_path):
    run = tmp_path / "run"
    # rank 1 runs out of space writing its optimizer partition of step8 (after step4 saved normally)
    proc = torchrun(base_run.cmd(run, *BASE_STEPS), PYTHONPATH=str(ROOT / "tests" / "faults"),
                    GAPT_TEST_ENOSPC="step8:1")
    assert proc.returncode != 0
    partial = run / "checkpoints" / "step8" / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    assert f"rank 1: no space left on device while writing {partial}" in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.count("no space left on device") == 1  # printed once, by rank 0
    assert not (run / "checkpoints" / "step8").exists()  # the partial tag is gone
    assert (run / "checkpoints" / "latest").read_text() == "step4"
    assert (run / "checkpoints" / "step4" / checkpoint.COMPLETE).is_file()

    resumed = torchrun(base_run.cmd(run, *BASE_STEPS, "--resume", "--keep-last", "1"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = metrics(run, after_resume=True)
    assert sorted(after) == [5, 6, 7, 8]
    for step in after:
        for key in ("ce", "mbe", "phase", "lr"):
            assert after[step][key] == base_run.metrics[step][key], (step, key)  # as if nothing had failed
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.is_dir()) == ["step8"]  # --keep-last 1
    assert (run / "checkpoints" / "latest").read_text() == "step8"


@pytest.mark.distributed
def test_resume_falls_back_from_an_incomplete_latest_tag(base_run, tmp_path):
    run = base_run.copy(tmp_path / "run")
    (run / "checkpoints" / "step8" / checkpoint.COMPLETE).unlink()  # as if a rank died while writing step8
    proc = torchrun(base_run.cmd(run, *BASE_STEPS, "--resume"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "'latest' names step8, which is incomplete" in proc.stderr and "using step4" in proc.stderr
    after = metrics(run, after_resume=True)
    assert sorted(after) == [5, 6, 7, 8] and all(after[s]["ce"] == base_run.metrics[s]["ce"] for s in after)
    assert (run / "checkpoints" / "step8" / checkpoint.COMPLETE).is_file()


@pytest.mark.distributed
def test_a_real_full_disk_during_a_save(base_run, tmp_path):
    """The same on a real size-limited filesystem (a tmpfs; mounting one needs root, else skipped): torch
    reports a full disk as a RuntimeError without an errno, and the message must still say so."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=1400k", "tmpfs", str(disk)]  # room for step4 (~0.95 MB) only
    if os.geteuid() != 0 or subprocess.run(mount, capture_output=True).returncode != 0:
        pytest.skip("mounting a size-limited tmpfs needs root")
    try:
        run = disk / "run"
        proc = torchrun(base_run.cmd(run, *BASE_STEPS))
        assert proc.returncode != 0
        assert f"no space left on device while writing {run / 'checkpoints' / 'step8'}" in proc.stderr, \
            proc.stderr[-3000:]
        assert not (run / "checkpoints" / "step8").exists()
        assert (run / "checkpoints" / "latest").read_text() == "step4"
        subprocess.run(["mount", "-o", "remount,size=8m", str(disk)], check=True)  # space freed by the user
        resumed = torchrun(base_run.cmd(run, *BASE_STEPS, "--resume"))
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        after = metrics(run, after_resume=True)
        assert sorted(after) == [5, 6, 7, 8] and all(after[s]["ce"] == base_run.metrics[s]["ce"] for s in after)
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
