"""The run-directory lock and the fresh-run rule, on the files themselves (the 2-rank runs that exercise them
are in test_checkpoint.py and test_resume.py)."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from gapt_ds import rundir


def write_lock(run_dir, **fields):
    record = {"host": socket.gethostname(), "pid": os.getpid(), "pid_started": psutil.Process().create_time(),
              "pid_space": rundir._pid_space(), "started": "then", "slurm_job": None, "slurm_restart": 0, **fields}
    (run_dir / rundir.LOCK_NAME).write_text(json.dumps(record))
    return record


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_lock_is_exclusive_and_released(tmp_path):
    lock = rundir.acquire_lock(tmp_path)
    holder = json.loads((tmp_path / rundir.LOCK_NAME).read_text())
    assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
    with pytest.raises(ValueError, match=f"PID {os.getpid()} on host {socket.gethostname()}"):
        rundir.acquire_lock(tmp_path)  # a live holder, even this very process
    lock.release()
    assert not (tmp_path / rundir.LOCK_NAME).exists()
    rundir.acquire_lock(tmp_path).release()


def test_a_lock_of_a_dead_process_on_this_host_is_cleared_with_a_warning(tmp_path):
    write_lock(tmp_path, pid=dead_pid())
    with pytest.warns(UserWarning, match="stale lock .* is no longer running"):
        lock = rundir.acquire_lock(tmp_path)
    assert json.loads((tmp_path / rundir.LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()
    write_lock(tmp_path, pid_started=1.0)  # a live PID, but reused by another process than the holder
    with pytest.warns(UserWarning, match="stale lock"):
        rundir.acquire_lock(tmp_path).release()


def test_a_lock_from_another_host_is_refused_with_how_to_clear_it(tmp_path):
    write_lock(tmp_path, host="node-017", pid=4242)
    with pytest.raises(ValueError) as err:
        rundir.acquire_lock(tmp_path)
    msg = str(err.value)
    assert "PID 4242 on host node-017" in msg and f"delete {tmp_path / rundir.LOCK_NAME}" in msg
    assert json.loads((tmp_path / rundir.LOCK_NAME).read_text())["host"] == "node-017"  # untouched
    write_lock(tmp_path, pid=dead_pid(), pid_space="another-boot/4026531836")  # same host name, other container
    with pytest.raises(ValueError, match="in use by another gapt-ds run"):
        rundir.acquire_lock(tmp_path)


def test_a_requeued_slurm_job_clears_its_earlier_incarnations_lock(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "777")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
    write_lock(tmp_path, host="node-001", pid=99, slurm_job="777", slurm_restart=0)
    with pytest.raises(ValueError, match="node-001"):  # same incarnation (e.g. two sruns): still refused
        rundir.acquire_lock(tmp_path)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    with pytest.warns(UserWarning, match="earlier run of the requeued Slurm job 777"):
        rundir.acquire_lock(tmp_path).release()


def test_a_fresh_run_over_a_previous_one_is_refused_unless_overwrite(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints" / "step4").mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    (run / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"checkpoints \(step4\), metrics.jsonl.*--resume.*--overwrite.*--run-dir"):
        rundir.admit(run, resume=False, overwrite=False)
    assert not (run / rundir.LOCK_NAME).exists() and (run / "checkpoints" / "step4").is_dir()
    rundir.admit(run, resume=True, overwrite=False).release()
    with pytest.warns(UserWarning, match="--overwrite: deleted the previous run"):
        lock = rundir.admit(run, resume=False, overwrite=True)
    assert sorted(p.name for p in run.iterdir()) == [rundir.LOCK_NAME, "notes.txt"]  # only gapt-ds's files went
    lock.release()


@pytest.mark.distributed
def test_a_second_run_on_a_running_run_dir_fails_fast_and_a_killed_runs_lock_is_cleared(base_run, tmp_path):
    import signal
    import time

    from runs import ROOT, bare_ranks, env, metrics
    from dist import free_port

    run = tmp_path / "run"
    first = subprocess.Popen([str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", "2", "--master_port",
                              str(free_port()), "-m", "gapt_ds.train",
                              *base_run.cmd(run, "--steps", "100000", "--save-every", "0", "--eval-every", "0")],
                             env=env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    try:
        deadline = time.time() + 240
        while not ((run / "metrics.jsonl").is_file() and metrics(run)) and time.time() < deadline:
            assert first.poll() is None, "the first run died"
            time.sleep(0.1)
        holder = json.loads((run / rundir.LOCK_NAME).read_text())
        second = bare_ranks(base_run.cmd(run, "--steps", "4", "--overwrite"))
        assert [r.returncode for r in second] == [2, 2], second[0].stderr[-3000:]
        assert f"is in use by another gapt-ds run (PID {holder['pid']} on host {holder['host']}" in second[0].stderr
        assert "error" not in second[1].stderr  # printed once, by rank 0
        assert first.poll() is None and json.loads((run / rundir.LOCK_NAME).read_text()) == holder
    finally:
        family = [psutil.Process(first.pid), *psutil.Process(first.pid).children(recursive=True)]
        for proc in family:  # SIGKILL: no chance to release the lock
            proc.send_signal(signal.SIGKILL)
        first.wait()
        psutil.wait_procs(family, timeout=30)  # reparented workers may stay zombies where nothing reaps them
    third = bare_ranks(base_run.cmd(run, "--steps", "2", "--save-every", "0", "--overwrite"))
    assert [r.returncode for r in third] == [0, 0], third[0].stderr[-3000:]
    assert f"removed the stale lock {run / rundir.LOCK_NAME} (PID {holder['pid']} on this host" in third[0].stderr
    assert sorted(metrics(run)) == [1, 2]  # the killed run's rows were deleted by --overwrite, not interleaved
    assert not (run / rundir.LOCK_NAME).exists()  # released at the end


@pytest.mark.distributed
def test_a_fresh_run_into_a_run_with_checkpoints_is_refused_on_every_rank(base_run, tmp_path):
    from runs import bare_ranks, snapshot

    run = base_run.copy(tmp_path / "run")
    before = snapshot(run)
    ranks = bare_ranks(base_run.cmd(run, "--steps", "4"))
    assert [r.returncode for r in ranks] == [2, 2], ranks[0].stderr[-3000:]
    assert "already holds a run (checkpoints (step4, step8), metrics.jsonl). Pass --resume" in ranks[0].stderr
    assert "error" not in ranks[1].stderr
    assert snapshot(run) == before
