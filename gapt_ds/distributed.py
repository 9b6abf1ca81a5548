"""The few collectives gapt-ds needs, all over the data-parallel group (docs/algorithm.md §3-4).

Activations are never partitioned by ZeRO, so MBE's inputs are local; only its statistics (and the
gate's inputs) cross ranks: one packed SUM all-reduce per optimizer step, plus one D×D Gram
all-reduce per selected layer and micro-batch in ``mbe_mode="global"``.
"""

from __future__ import annotations

import atexit
import gc
import os
import sys
from typing import Any, Callable, NoReturn, Optional, TypeVar

import torch
import torch.distributed as dist

Group = Optional[dist.ProcessGroup]
T = TypeVar("T")


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size(group: Group = None) -> int:
    return dist.get_world_size(group=group) if is_distributed() else 1


def rank(group: Group = None) -> int:
    return dist.get_rank(group=group) if is_distributed() else 0


def barrier(group: Group = None) -> None:
    """All ranks meet (no-op in a single process)."""
    if is_distributed():
        dist.barrier(group=group)


def all_gather_object(obj: Any, group: Group = None) -> list[Any]:
    """Every rank's ``obj`` in rank order (``[obj]`` in a single process)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size(group)
    dist.all_gather_object(out, obj, group=group)
    return out


def broadcast_object(obj: T, group: Group = None) -> T:
    """Rank 0's ``obj`` on every rank (``obj`` itself in a single process)."""
    if not is_distributed() or world_size(group) == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=group)
    return box[0]


def rank0_decides(decide: Callable[[], T], share: bool = False) -> Optional[T]:
    """Run ``decide`` on rank 0 only and make every rank share the outcome (one broadcast).

    If it raises, rank 0 re-raises its exception and every other rank raises a ValueError with the same
    message, marked ``reported_elsewhere`` so that it is printed once. With ``share``, the result is sent
    to every rank; otherwise the other ranks get None.
    """
    failure: Optional[BaseException] = None
    error = result = None
    if rank() == 0:
        try:
            result = decide()
        except BaseException as exc:  # every rank must hear about it, or the others wait forever
            failure, error = exc, str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
    error, shared = broadcast_object([error, result if share else None])
    if failure is not None:
        raise failure
    if error is not None:
        err = ValueError(error)
        err.reported_elsewhere = True  # type: ignore[attr-defined]
        raise err
    return shared if share else result


def reduce_scatter_sum(out: torch.Tensor, inp: torch.Tensor, group: Group = None) -> torch.Tensor:
    """``out`` (numel = inp.numel() / W) receives this rank's chunk of the SUM of ``inp`` over ranks."""
    fn = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor  # the newer name first
    fn(out, inp, op=dist.ReduceOp.SUM, group=group)
    return out


def all_reduce_sum(t: torch.Tensor, group: Group = None) -> torch.Tensor:
    """In-place SUM all-reduce (identity in a single process); returns ``t``."""
    if is_distributed() and world_size(group) > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
    return t


def global_gram(z: torch.Tensor, group: Group = None) -> torch.Tensor:
    """Σ_r Z_rᵀ Z_r over the group, fp32, no autograd (gradients go through the surrogate)."""
    from gapt_ds.mbe import gram

    with torch.no_grad():
        return all_reduce_sum(gram(z), group)


_had_process_groups = False


def shutdown_process_groups() -> None:
    """Destroy every process group now, so that their communicator threads end before interpreter shutdown.

    Call after every engine was ``destroy()``-ed. ``destroy_process_group`` only unregisters the groups;
    their threads (gloo's ``pt_gloo_runloop``/``gloo_tcp_loop``) end when the last reference goes, so
    the references DeepSpeed caches are dropped too. A group left alive into interpreter shutdown
    can abort the process (``terminate called without an active exception``, SIGABRT).
    """
    global _had_process_groups
    if not is_distributed():
        return
    _had_process_groups = True
    dist.destroy_process_group()
    try:
        from deepspeed.utils import groups  # DeepSpeed keeps the world group in a module global

        groups._WORLD_GROUP = None
    except (ImportError, AttributeError):
        pass
    gc.collect()


def exit_process(code: int) -> NoReturn:
    """End a process that ran collectives: exit handlers run and stdio is flushed, then ``os._exit``.

    Interpreter finalization is skipped on purpose (as ``multiprocessing`` does for its workers). Under
    ZeRO-3 DeepSpeed keeps one process group referenced from C++ even after ``destroy()``; its gloo worker
    thread may still be releasing a finished collective's tensors, which needs the GIL, when the interpreter
    finalizes, and that aborts the process (SIGABRT, ``terminate called without an active exception``).
    Without finalization there is no such window. Processes that never had a group exit normally.
    """
    if not _had_process_groups:
        sys.exit(code)
    atexit._run_exitfuncs()  # logging.shutdown, user handlers: what finalization would have run first
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or broken pipe: nothing left to save
            pass
    os._exit(code)


def set_default_timeout(timeout) -> None:
    """Make ``timeout`` (a ``timedelta``) torch's default for every process group created afterwards.
    DeepSpeed builds its data-parallel groups with ``new_group()`` and no timeout, which torch then sets
    to its own default (30 min on gloo), not to the world group's: ``--dist-timeout`` would not hold there."""
    from torch.distributed import distributed_c10d

    for name in ("default_pg_timeout", "default_pg_nccl_timeout"):
        if hasattr(distributed_c10d, name):
            setattr(distributed_c10d, name, timeout)
