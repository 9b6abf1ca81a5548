"""Failure behaviour of `gapt-ds train` on real runs: divergence, preemption signals, frozen ranks."""

import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from dist import free_port
from test_train import BIN, ROOT, env, metrics, run, train_args, write_ds_config

pytestmark = pytest.mark.distributed
TORCHRUN = [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port"]


def wait_for_step(run_dir: Path, step: int, proc: subprocess.Popen, timeout: float = 240) -> int:
    """Block until metrics.jsonl has a row for ``step`` (or the process ended); return the last step logged."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        done = metrics(run_dir) if (run_dir / "metrics.jsonl").exists() else {}
        if max(done, default=0) >= step:
            return max(done)
        time.sleep(0.05)
    raise AssertionError(f"{run_dir} did not reach step {step} (exit code {proc.poll()})")


def test_divergence_guard_stops_after_consecutive_skipped_steps_and_saves_nothing(tmp_path):
    # w = 1e308 makes the loss infinite while CE and MBE stay finite: DeepSpeed skips every step itself
    config = write_ds_config(tmp_path / "ds.json", mbe_weight=1e308, phase="compress")
    py = [str(BIN / "python"), "-m", "gapt_ds.cli", "train"]
    proc = run([*py, *train_args(tmp_path, "run", "--steps", "20", "--save-every", "0", "--max-skipped-steps", "3",
                                 config=config)])
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert "the last 3 optimizer steps (up to step 3) were all skipped" in last and "--max-skipped-steps" in last
    rows = metrics(tmp_path / "run")
    assert sorted(rows) == [1, 2, 3] and all(r["skipped"] for r in rows.values())
    assert not list((tmp_path / "run" / "checkpoints").glob("step*"))


@pytest.mark.parametrize("launcher", ["torchrun"])
def test_sigterm_saves_a_checkpoint_and_resume_matches_an_uninterrupted_run(tmp_path, launcher):
    extra = ("--steps", "16", "--save-every", "100", "--eval-every", "0", "--dropout", "0.1")
    full = run([*TORCHRUN, str(free_port()), "-m", "gapt_ds.train", *train_args(tmp_path, "full", *extra)])
    assert full.returncode == 0, full.stderr[-3000:]

    run_dir = tmp_path / "stopped"
    cmd = [*TORCHRUN, str(free_port()), "-m", "gapt_ds.train", *train_args(tmp_path, "stopped", *extra)]
    proc = subprocess.Popen(cmd, env=env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    signalled_at = wait_for_step(run_dir, 3, proc)
    proc.send_signal(signal.SIGTERM)  # torchrun forwards it to its workers
    out = proc.communicate(timeout=240)[0]
    assert proc.returncode != 0, out[-3000:]
    stopped_at = max(metrics(run_dir))
    assert signalled_at <= stopped_at < 16, (signalled_at, stopped_at)
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == f"step{stopped_at}"
    lines = [line for line in out.splitlines() if "stopped by SIGTERM" in line]
    assert len(lines) == 1 and f"after optimizer step {stopped_at}" in lines[0], out[-3000:]

    resumed = run([*TORCHRUN, str(free_port()), "-m", "gapt_ds.train", *train_args(tmp_path, "stopped", *extra),
                   "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after, ref = metrics(run_dir, after_resume=True), metrics(tmp_path / "full")
    assert sorted(after) == list(range(stopped_at + 1, 17))
    for s in after:
        for key in ("ce", "mbe", "phase", "next_phase", "lr", "skipped"):
            assert after[s][key] == ref[s][key], (s, key)  # bitwise: the stop lost nothing


def _leftovers(marker: str) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(marker in part for part in p.info["cmdline"] or []):
                found.append(p)
        except psutil.Error:
            pass
    return found


def test_sigterm_to_launch_script_reaches_every_deepspeed_rank_and_leaves_no_orphans(tmp_path):
    run_dir = tmp_path / "main"
    cmd = ["bash", str(ROOT / "launch" / "train.sh"), "--model", "tiny", "--seq-len", "32", "--steps", "40",
           "--save-every", "100", "--eval-every", "0", "--arith-eval", "0", "--no-progress"]
    proc = subprocess.Popen(cmd, env=env(RUN_DIR=str(run_dir)), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        wait_for_step(run_dir, 2, proc)
        proc.send_signal(signal.SIGTERM)  # to the script only, as Slurm or a user's `kill PID` would
        out = proc.communicate(timeout=240)[0]
        left = _leftovers(str(run_dir))
        assert not left, f"orphans still running: {[p.pid for p in left]}"
    finally:
        for p in _leftovers(str(run_dir)):
            p.kill()
    assert proc.returncode != 0, out[-3000:]
    stopped_at = max(metrics(run_dir))
    assert stopped_at < 40 and (run_dir / "checkpoints" / "latest").read_text().strip() == f"step{stopped_at}"
    assert sum("stopped by SIGTERM" in line for line in out.splitlines()) == 1, out[-3000:]


def test_frozen_rank_times_out_with_the_collective_and_step_named(tmp_path):
    run_dir, log = tmp_path / "frozen", tmp_path / "out.txt"
    cmd = [*TORCHRUN, str(free_port()), "-m", "gapt_ds.train",
           *train_args(tmp_path, "frozen", "--steps", "400", "--eval-every", "0", "--save-every", "0",
                       "--dist-timeout", "0.5")]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env(), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    family = []
    try:
        wait_for_step(run_dir, 3, proc)
        family = psutil.Process(proc.pid).children(recursive=True)
        workers = {int(p.environ()["RANK"]): p for p in family if "RANK" in p.environ()}
        workers[1].suspend()  # SIGSTOP: alive but frozen
        frozen_at = max(metrics(run_dir))
        t0 = time.time()
        workers[0].wait(timeout=180)
        waited = time.time() - t0
    finally:
        for p in [*family, psutil.Process(proc.pid)]:
            try:
                p.kill()
            except psutil.Error:
                pass
        proc.wait()
    text = log.read_text()
    lines = [line for line in text.splitlines() if "rank 0 timed out in the" in line]
    assert len(lines) == 1, text[-3000:]
    step = int(lines[0].split("of optimizer step ")[1].split(":")[0])
    last_logged = max(metrics(run_dir))  # rank 0 hung in the step after the last one it logged
    assert step == last_logged + 1 and step >= frozen_at, (frozen_at, last_logged, lines[0])
    assert "--dist-timeout" in lines[0] and 25 < waited < 150, (waited, lines[0])


def test_a_bad_tokenizer_is_reported_once_by_a_two_rank_job(tmp_path):
    """Both ranks (started as a launcher would, without one that kills the other) fail on the same input
    after the process group exists: rank 0 prints the line, rank 1 stays silent, both exit 2."""
    args = train_args(tmp_path, "run", "--tokenizer", "/etc/passwd")
    cmd = [str(BIN / "python"), "-m", "gapt_ds.cli", "train", *args]
    port = str(free_port())
    procs = [subprocess.Popen(cmd, env=env(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                                           MASTER_PORT=port), cwd=ROOT, stderr=subprocess.PIPE, text=True)
             for r in (0, 1)]
    errs = [p.communicate(timeout=180)[1] for p in procs]
    assert [p.returncode for p in procs] == [2, 2], errs
    assert [e.count("tokenizer /etc/passwd: not a SentencePiece model") for e in errs] == [1, 0], errs[0][-2000:]
