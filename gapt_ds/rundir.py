"""One run per run directory: a lock file held by rank 0 for the run's lifetime, and the rule that a fresh
run never writes over a previous one.

The lock is ``RUN_DIR/gapt-ds.lock``, created with ``O_CREAT | O_EXCL`` (atomic on local filesystems and on
NFSv3+, Lustre and GPFS, so ranks on several hosts sharing the run directory need nothing else). It holds
the holder's host, PID, process start time, machine (boot id and PID namespace) and Slurm job. A lock is
stale, and is cleared with a warning, when its holder ran on this machine and is no longer running (PID
gone, reused by another process, or a zombie), or when it was taken by an earlier incarnation of the same
requeued Slurm job. A lock held from another host is never
cleared automatically: the error names the host and PID, and deleting the file clears it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import psutil

LOCK_NAME = "gapt-ds.lock"
RUN_FILES = ("metrics.jsonl", "summary.json", "args.json", "ds_config.json")
RUN_DIRS = ("checkpoints", "tensorboard")


def _pid_space() -> str:
    """This machine's boot and PID namespace: containers on several nodes may share one host name, and a PID
    only means something within one of these."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{boot}/{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:  # not Linux: the host name alone
        return ""


def _me() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "pid_started": psutil.Process().create_time(),
            "pid_space": _pid_space(), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "slurm_job": os.environ.get("SLURM_JOB_ID"),
            "slurm_restart": int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)}


@dataclass
class RunDirLock:
    """The lock this process holds; ``release`` removes the file if it is still ours."""

    path: Path
    record: dict

    def release(self) -> None:
        if _read(self.path) == self.record:
            self.path.unlink(missing_ok=True)


def _read(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _stale_reason(holder: dict, me: dict) -> Optional[str]:
    """Why the holder's lock may be cleared, or None when it may still be running."""
    if holder.get("slurm_job") and holder["slurm_job"] == me["slurm_job"] and \
            holder.get("slurm_restart", 0) < me["slurm_restart"]:
        return f"taken by an earlier run of the requeued Slurm job {holder['slurm_job']}"
    if holder.get("host") != me["host"] or holder.get("pid_space") != me["pid_space"]:
        return None  # another machine or container: its PIDs cannot be checked from here
    try:
        proc = psutil.Process(holder["pid"])
        alive = proc.create_time() == holder.get("pid_started") and proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, KeyError, TypeError, ValueError):
        alive = False
    return None if alive else f"PID {holder.get('pid')} on this host is no longer running"


def acquire_lock(run_dir: Path) -> RunDirLock:
    """Take ``run_dir``'s lock or raise ValueError naming the holder's host and PID."""
    path, me = run_dir / LOCK_NAME, _me()
    for _ in range(3):  # a stale lock cleared by a concurrent starter: try again
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read(path)
            if holder is None:  # being written right now, or garbage
                time.sleep(0.2)
                holder = _read(path)
            reason = _stale_reason(holder, me) if holder else None
            if reason is None:
                who = (f"PID {holder.get('pid')} on host {holder.get('host')}, started {holder.get('started')}"
                       if holder else "an unreadable lock")
                raise ValueError(f"{run_dir} is in use by another gapt-ds run ({who}). Wait for it to finish or "
                                 f"use another --run-dir; if that run is dead, delete {path}") from None
            _clear_stale(path, holder, reason)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(me))
            f.flush()
            os.fsync(f.fileno())
        return RunDirLock(path, me)
    raise ValueError(f"{run_dir}: could not take {path}: other runs are starting in it at the same time")


def _clear_stale(path: Path, holder: dict, reason: str) -> None:
    """Remove ``path`` only if it still holds ``holder`` (rename first, so a fresh lock is never deleted)."""
    aside = path.with_name(f"{path.name}.stale-{os.getpid()}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    if _read(aside) != holder:  # another starter replaced it meanwhile: put it back
        try:
            os.link(aside, path)
        finally:
            aside.unlink(missing_ok=True)
        return
    aside.unlink(missing_ok=True)
    warnings.warn(f"removed the stale lock {path} ({reason})")


def previous_run(run_dir: Path) -> list[str]:
    """What of an earlier run ``run_dir`` holds: checkpoint tags and a non-empty ``metrics.jsonl``."""
    found = []
    ckpt = run_dir / "checkpoints"
    if ckpt.is_dir() and any(ckpt.iterdir()):
        tags = sorted(p.name for p in ckpt.iterdir() if p.is_dir())
        found.append(f"checkpoints ({', '.join(tags) or 'a latest file'})")
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file() and metrics.stat().st_size:
        found.append("metrics.jsonl")
    return found


def clear_run(run_dir: Path) -> None:
    """``--overwrite``: delete what ``gapt-ds train`` wrote into ``run_dir`` (never the lock, never other files)."""
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)
    for name in RUN_DIRS:
        shutil.rmtree(run_dir / name, ignore_errors=True)


def admit(run_dir: Path, resume: bool, overwrite: bool) -> RunDirLock:
    """Rank 0, before anything is written: lock ``run_dir``; refuse a fresh run over a previous one unless
    ``overwrite`` (then clear it). The returned lock is released by the caller when the run ends."""
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = acquire_lock(run_dir)
    try:
        found = [] if resume else previous_run(run_dir)
        if found and not overwrite:
            raise ValueError(f"{run_dir} already holds a run ({', '.join(found)}). Pass --resume to continue it, "
                             "--overwrite to delete it and start again, or choose a new --run-dir")
        if found:
            clear_run(run_dir)
            warnings.warn(f"--overwrite: deleted the previous run in {run_dir} ({', '.join(found)})")
    except BaseException:
        lock.release()
        raise
    return lock
