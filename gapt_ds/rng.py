"""Random-number state of this process: seed, save and restore (Python, NumPy, torch CPU and CUDA).

Used by checkpoints (an exact resume restores every rank's state) and by the alignment monitor
(its extra forwards must not change the training's dropout draws)."""

from __future__ import annotations

import hashlib
import random

import numpy as np
import torch

from gapt_ds import distributed


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def reseed(seed: int, step: int, rank: int) -> None:
    """A deterministic fresh state for ``rank`` at optimizer step ``step`` (a resume on another world size,
    where the saved per-rank states cannot map onto the new ranks)."""
    digest = hashlib.sha256(f"gapt-ds:{seed}:{step}:{rank}".encode()).digest()
    seed_everything(int.from_bytes(digest[:8], "little") >> 1)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def all_rng_states() -> list[dict]:
    """Every rank's ``rng_state()``, in rank order (collective when distributed)."""
    return distributed.all_gather_object(rng_state())
