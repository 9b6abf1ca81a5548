"""Training-run checkpoints: DeepSpeed's own (model, optimizer, scheduler, and the gate through the engine's
``save_checkpoint``) plus the run state that makes a resume exact: data position, per-rank RNG, and the
settings that must not change.

Only DeepSpeed's writer ranks store ``client_state``, so per-rank RNG states are all-gathered first and
each rank picks its own on load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from gapt_ds import distributed
from gapt_ds.rng import all_rng_states, set_rng_state

RUN_KEY = "gapt_run"


def save(engine, ckpt_dir: Path, step: int, micro_batches: int, fingerprint: dict) -> None:
    """Collective: every rank calls it. Tag ``step{N}``; DeepSpeed's ``latest`` file points at it."""
    run = {"step": step, "micro_batches": micro_batches, "rng": all_rng_states(), "fingerprint": fingerprint}
    engine.save_checkpoint(str(ckpt_dir), tag=f"step{step}", client_state={RUN_KEY: run})


def load(engine, ckpt_dir: Path, fingerprint: dict) -> dict:
    """Restore the latest checkpoint under ``ckpt_dir``; returns the run state. Clear errors for a missing,
    truncated or mismatched checkpoint."""
    try:
        tag_dir = tag_directory(ckpt_dir)
        check_fingerprint(peek_run_state(tag_dir)["fingerprint"], fingerprint, tag_dir)
    except ValueError as err:
        raise ValueError(f"--resume: {err}") from None
    tag = tag_dir.name
    try:
        path, client_state = engine.load_checkpoint(str(ckpt_dir), tag=tag)
    except ValueError:
        raise
    except Exception as err:  # torch.load / state_dict errors: corrupt files or another model shape
        raise ValueError(f"--resume: cannot load checkpoint {ckpt_dir / tag}: it is truncated, corrupt or from a "
                         f"different model/ZeRO setting ({type(err).__name__}: {str(err)[:300]})") from None
    if path is None or not client_state or RUN_KEY not in client_state:
        raise ValueError(f"--resume: {ckpt_dir / tag} is not a gapt-ds training checkpoint (no run state)")
    run = client_state[RUN_KEY]
    set_rng_state(run["rng"][distributed.rank()])
    return run


def tag_directory(ckpt_dir: Path, tag: Optional[str] = None) -> Path:
    """``ckpt_dir/tag``; without a tag, the one DeepSpeed's ``latest`` file names."""
    if tag is None:
        latest = ckpt_dir / "latest"
        if not latest.is_file():
            raise ValueError(f"{ckpt_dir}: no 'latest' file, so no DeepSpeed checkpoint there")
        tag = latest.read_text().strip()
    if not (ckpt_dir / tag).is_dir():
        raise ValueError(f"{ckpt_dir}: checkpoint {tag!r} does not exist")
    return ckpt_dir / tag


def peek_run_state(tag_dir: Path) -> dict:
    """The run state stored with rank 0's model states, read (memory-mapped) before DeepSpeed loads anything."""
    files = sorted(tag_dir.glob("mp_rank_00_model_states.pt")) or sorted(tag_dir.glob("*model_states.pt"))
    if not files:
        raise ValueError(f"{tag_dir} has no model states file: an incomplete checkpoint")
    try:
        state = torch.load(files[0], map_location="cpu", weights_only=False, mmap=True)
    except Exception as err:
        raise ValueError(f"cannot read {files[0]}: it is truncated or corrupt "
                         f"({type(err).__name__}: {str(err)[:200]})") from None
    if not isinstance(state, dict) or RUN_KEY not in state:
        raise ValueError(f"{tag_dir} is not a gapt-ds training checkpoint (no run state)")
    return state[RUN_KEY]


def check_fingerprint(saved: dict, current: dict, where: Path) -> None:
    changed = {k: (saved.get(k), v) for k, v in current.items() if saved.get(k) != v}
    if changed:
        lines = "\n".join(f"  {k}: checkpoint {old!r}, now {new!r}" for k, (old, new) in changed.items())
        raise ValueError(f"{where} was written by a run with other settings:\n{lines}")
