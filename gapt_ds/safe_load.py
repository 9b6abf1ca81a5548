"""Checkpoint files read without running code from them.

``torch.load(weights_only=True)`` refuses every pickled global outside torch's tensor types and an
allow-list. ``SAFE_GLOBALS`` names the few non-tensor types that DeepSpeed and gapt-ds put into a
checkpoint: numpy arrays (the numpy RNG state), DeepSpeed's ZeRO stage enum, loss scalers and
fragment addresses. A file that references anything else is refused with an error naming the file and
the globals, before any of it is unpickled for real.

DeepSpeed's own ``engine.load_checkpoint`` and ``zero_to_fp32`` unpickle with ``weights_only=False``.
``verify_tag`` checks every file of a tag with the restricted unpickler first (memory-mapped, so the
tensor data is not read), so those loads only ever see files made of allow-listed types.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch


def safe_globals() -> list:
    """The non-tensor types a gapt-ds / DeepSpeed checkpoint may contain."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    numeric = (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
               np.float16, np.float32, np.float64)
    return [np._core.multiarray._reconstruct, np.ndarray, np.dtype, *(type(np.dtype(t)) for t in numeric),
            ZeroStageEnum, LossScaler, DynamicLossScaler, fragment_address]


def _refusal(path: Path, err: Exception) -> str:
    try:
        allowed = {f"{g.__module__}.{g.__qualname__}" for g in safe_globals()}
        names = [g for g in torch.serialization.get_unsafe_globals_in_checkpoint(str(path)) if g not in allowed]
    except Exception:  # not a zip checkpoint: only the unpickler's own reason is known
        names = []
    detail = str(err).partition("WeightsUnpickler error:")[2].strip().split("\n")[0]
    what = f"references {', '.join(names)}" if names else f"is not a plain checkpoint ({detail or 'unpickler refused'})"
    return (f"refusing to load {path}: it {what}, which no gapt-ds or DeepSpeed checkpoint contains; "
            "unpickling it could run code. Only load checkpoints from sources you trust")


def safe_load(path: str | Path, mmap: bool = False) -> Any:
    """``torch.load`` on CPU that never runs code from the file: ValueError naming the file otherwise
    (also for a truncated or corrupt file)."""
    path = Path(path)
    try:
        with torch.serialization.safe_globals(safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        if "Weights only load failed" in str(err):
            raise ValueError(_refusal(path, err)) from None
        raise ValueError(f"cannot read {path}: it is truncated or corrupt ({str(err)[:200]})") from None
    except Exception as err:
        raise ValueError(f"cannot read {path}: it is truncated or corrupt "
                         f"({type(err).__name__}: {str(err)[:200]})") from None


def verify_tag(tag_dir: Path) -> None:
    """Check every ``.pt`` file of a checkpoint tag with the restricted unpickler (tensors memory-mapped)."""
    for path in sorted(tag_dir.rglob("*.pt")):
        safe_load(path, mmap=True)
