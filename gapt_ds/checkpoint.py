"""Training-run checkpoints: DeepSpeed's own (model, optimizer, scheduler, and the gate through the engine's
``save_checkpoint``) plus the run state that makes a resume exact: data position (sequences consumed by all
ranks together, and the batch layout the data order was laid out with), per-rank RNG, and the settings that
must not change. A resume on another world size loads the tag's universal form (``gapt_ds.universal``).

Only DeepSpeed's writer ranks store ``client_state``, so per-rank RNG states are all-gathered first and
each rank picks its own on load.

A tag is complete once ``gapt_complete.json`` is in it: rank 0 writes that marker after every rank has
finished writing, and only then moves ``latest``. A failed save (disk full...) removes its partial tag and
leaves the previous checkpoint and ``latest`` as they were. Readers only ever use complete tags.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Optional

from gapt_ds import distributed
from gapt_ds.rng import all_rng_states, reseed, set_rng_state

RUN_KEY = "gapt_run"


COMPLETE = "gapt_complete.json"


class CheckpointSaveError(RuntimeError):
    """A save failed on some rank; its partial tag was removed and the previous checkpoint is intact."""

    exit_code = 1  # the CLI prints the message, without a traceback, and exits with this


class _RecordingEngine:
    """Wraps DeepSpeed's checkpoint engine: a failed file write is recorded instead of raised, so every rank
    still takes part in the collectives inside ``save_checkpoint``. Written files are fsynced. (torch.save
    reports a full disk as a RuntimeError from its zip writer, without an errno: hence the broad except.)"""

    def __init__(self, inner) -> None:
        self.inner, self.errors = inner, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def save(self, state_dict, path: str):
        try:
            result = self.inner.save(state_dict, path)
            with open(path, "rb") as f:
                os.fsync(f.fileno())
            return result
        except Exception as err:
            self.errors.append(_write_error(err, path))


def _disk_full(path) -> bool:
    try:
        st = os.statvfs(Path(path).parent)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 2**20  # a failed write has just used up what was left


def _write_error(err: Exception, path) -> str:
    """One line for a failed write; a full disk is named as such."""
    where = getattr(err, "filename", None) or path
    if getattr(err, "errno", None) == errno.ENOSPC or _disk_full(where):
        return f"no space left on device while writing {where}"
    return f"cannot write {where}: {getattr(err, 'strerror', None) or f'{type(err).__name__}: {err}'}"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _gather_errors(errors: list[str]) -> list[str]:
    """Every rank's errors, on every rank, prefixed with the rank."""
    return [f"rank {r}: {e}" for r, errs in enumerate(distributed.all_gather_object(errors)) for e in errs]


def _write_files(engine, ckpt_dir: Path, tag: str, client_state: dict) -> list[str]:
    """DeepSpeed's save of one tag (``latest`` untouched); returns every rank's write errors."""
    recorder = _RecordingEngine(engine.checkpoint_engine)
    engine.checkpoint_engine = recorder
    try:
        engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=client_state, save_latest=False)
    except OSError as err:  # a write outside the checkpoint engine (DeepSpeed's recovery-script copy) comes
        recorder.errors.append(_write_error(err, ckpt_dir / tag))  # right before its closing barrier: join it
        distributed.barrier()
    finally:
        engine.checkpoint_engine = recorder.inner
    return _gather_errors(recorder.errors)


def save(engine, ckpt_dir: Path, step: int, data: dict, fingerprint: dict, settings: Optional[dict] = None,
         keep_last: int = 0) -> None:
    """Collective: every rank calls it. Writes tag ``step{N}``, marks it complete once every rank has written
    its files, then points ``latest`` at it. If any rank fails, every rank raises CheckpointSaveError and
    the partial tag is removed. ``keep_last`` > 0 then deletes all but the newest that many complete tags.
    ``data`` is the data position: ``{"sequences": consumed, "data_layout": [W0, B0]}`` (``data_position``)."""
    rank = distributed.rank()
    tag_dir = ckpt_dir / f"step{step}"
    run = {"step": step, **data, "rng": all_rng_states(), "fingerprint": fingerprint, "settings": settings}
    if rank == 0 and tag_dir.exists():  # left by an earlier save of this step that never completed
        shutil.rmtree(tag_dir)
    errors = _write_files(engine, ckpt_dir, tag_dir.name, {RUN_KEY: run})
    if rank == 0 and not errors:
        try:
            _write_atomic(tag_dir / COMPLETE, json.dumps({"step": step, "saved_at": time.time()}))
            _write_atomic(ckpt_dir / "latest", tag_dir.name)
        except OSError as err:
            errors = [f"rank 0: {_write_error(err, err.filename or tag_dir)}"]
    errors = distributed.broadcast_object(errors)  # rank 0's verdict
    if errors:
        if rank == 0:
            shutil.rmtree(tag_dir, ignore_errors=True)
        previous = (ckpt_dir / "latest").read_text().strip() if (ckpt_dir / "latest").is_file() else "none"
        err = CheckpointSaveError(f"checkpoint {tag_dir} failed and was removed: {'; '.join(errors)}. "
                                  f"The previous checkpoint ({previous}) is intact; resume from it with --resume")
        err.reported_elsewhere = rank != 0  # the CLI prints it once
        raise err
    if rank == 0 and keep_last:
        for old in complete_tags(ckpt_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)


def load(engine, tag_dir: Path, universal: bool = False) -> dict:
    """Restore ``tag_dir`` (checked by ``resume.check`` first), from its universal form if ``universal``
    (the engine must be built with ``"checkpoint": {"load_universal": true}``); returns the run state.
    Every rank gets its saved RNG state back; on another world size that cannot map, so each rank is
    seeded from (seed, step, rank) instead."""
    load_dir, tag = (tag_dir, "universal") if universal else (tag_dir.parent, tag_dir.name)
    try:
        path, client_state = engine.load_checkpoint(str(load_dir), tag=tag)
    except ValueError:
        raise
    except Exception as err:  # torch.load / state_dict errors: corrupt files or another model shape
        raise ValueError(f"--resume: cannot load checkpoint {load_dir / tag}: it is truncated, corrupt or from a "
                         f"different model/ZeRO setting ({type(err).__name__}: {str(err)[:300]})") from None
    if path is None or not client_state or RUN_KEY not in client_state:
        raise ValueError(f"--resume: {tag_dir} is not a gapt-ds training checkpoint (no run state)")
    if universal and engine.zero_optimization_stage() == 3:
        from gapt_ds.deepspeed_compat import repair_zero3_universal_load

        repair_zero3_universal_load(engine, str(load_dir / tag))
    run = client_state[RUN_KEY]
    if len(run["rng"]) == distributed.world_size():
        set_rng_state(run["rng"][distributed.rank()])
    else:
        reseed(run["fingerprint"]["seed"], run["step"], distributed.rank())
    return run


def data_position(run: dict) -> tuple[int, tuple[int, int]]:
    """(sequences consumed, data layout (W0, B0)) of a run state. Older checkpoints recorded the global
    micro-batches read (``micro_batches``) in their own layout instead."""
    fp = run["fingerprint"]
    layout = tuple(run.get("data_layout") or (fp["world_size"], fp["micro_batch"]))
    if "sequences" in run:
        return int(run["sequences"]), layout
    return int(run["micro_batches"]) * fp["world_size"] * fp["micro_batch"], layout


def is_complete(tag_dir: Path) -> bool:
    return (tag_dir / COMPLETE).is_file()


def complete_tags(ckpt_dir: Path) -> list[Path]:
    """The complete tags under ``ckpt_dir``, oldest first (by the step their marker records)."""
    tags = [p for p in ckpt_dir.iterdir() if p.is_dir() and is_complete(p)] if ckpt_dir.is_dir() else []

    def step(p: Path) -> int:
        try:
            return int(json.loads((p / COMPLETE).read_text())["step"])
        except (OSError, ValueError, KeyError, TypeError):
            return -1

    return sorted(tags, key=lambda p: (step(p), p.name))


def tag_directory(ckpt_dir: Path, tag: Optional[str] = None) -> Path:
    """``ckpt_dir/tag``, which must be complete. Without a tag, the one DeepSpeed's ``latest`` file names;
    if that is missing, empty or incomplete, the newest complete tag, with a warning naming both."""
    if tag is not None:
        if not (ckpt_dir / tag).is_dir():
            raise ValueError(f"{ckpt_dir}: checkpoint {tag!r} does not exist")
        if not is_complete(ckpt_dir / tag):
            raise ValueError(f"{ckpt_dir / tag} is incomplete (no {COMPLETE}: its save never finished)")
        return ckpt_dir / tag
    latest = ckpt_dir / "latest"
    named = latest.read_text().strip() if latest.is_file() else None
    if named and is_complete(ckpt_dir / named):
        return ckpt_dir / named
    if named is None:
        problem = f"{ckpt_dir} has no 'latest' file"
    elif not named:
        problem = f"the 'latest' file {latest} is empty"
    elif (ckpt_dir / named).is_dir():
        problem = f"'latest' names {named}, which is incomplete (no {COMPLETE}: its save never finished)"
    else:
        problem = f"'latest' names {named}, which does not exist"
    done = complete_tags(ckpt_dir)
    if not done:
        raise ValueError(f"{problem}, and {ckpt_dir} holds no complete checkpoint")
    warnings.warn(f"{problem}; using {done[-1].name}, the newest complete checkpoint in {ckpt_dir}")
    return done[-1]


def peek_run_state(tag_dir: Path) -> dict:
    """The run state stored with rank 0's model states, read (memory-mapped, without running code from the
    file) before DeepSpeed loads anything."""
    from gapt_ds.safe_load import safe_load

    files = sorted(tag_dir.glob("mp_rank_00_model_states.pt")) or sorted(tag_dir.glob("*model_states.pt"))
    if not files:
        raise ValueError(f"{tag_dir} has no model states file: an incomplete checkpoint")
    state = safe_load(files[0], mmap=True)
    if not isinstance(state, dict) or RUN_KEY not in state:
        raise ValueError(f"{tag_dir} is not a gapt-ds training checkpoint (no run state)")
    return state[RUN_KEY]
