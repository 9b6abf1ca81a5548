"""Run a worker function on N real ranks (torch.multiprocessing + gloo) and collect its results."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Callable

import torch
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bootstrap(rank: int, world: int, port: int, worker: Callable, out_dir: str, kwargs: dict) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    from gapt_ds.deepspeed_compat import skip_cpu_shm_build

    skip_cpu_shm_build()
    result = worker(rank, **kwargs)
    torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def run_ranks(worker: Callable, out_dir: Path, world: int = 2, **kwargs) -> list[Any]:
    """Spawn ``world`` ranks running ``worker(rank, **kwargs)``; return each rank's return value."""
    out_dir.mkdir(parents=True, exist_ok=True)
    mp.spawn(_bootstrap, args=(world, free_port(), worker, str(out_dir), kwargs), nprocs=world, join=True)
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(world)]
