"""The token cache on many nodes: one build per filesystem, whether or not ``--cache-dir`` is shared.

Global rank 0 builds (or reuses) the cache, then all ranks meet at a barrier. The finished cache is the
marker: local rank 0 of every other node looks for it; if its node cannot see it (``--cache-dir`` on a
node-local disk), it builds the node's own copy, byte-identical because tokenization is deterministic.
The node's other ranks wait at a second barrier, then every rank memory-maps its node's copy. On a shared
filesystem nobody but rank 0 tokenizes; on node-local disks one process per node does, never one per rank.
"""

from __future__ import annotations

import os
import sys

from gapt_ds import distributed
from gapt_ds.data.cache import TokenCache, build_cache, cache_root, open_cache


def local_rank() -> int:
    """This process's rank within its node, as the launchers (deepspeed, torchrun, Slurm) set it."""
    for key in ("LOCAL_RANK", "SLURM_LOCALID"):
        if key in os.environ:
            return int(os.environ[key])
    return 0


def prepare_cache(source: str, tokenizer, cache_dir: str, show_progress: bool = True, workers: int = 1,
                  **settings) -> TokenCache:
    """Build the cache once per filesystem and open it on every rank; collective over the default group.

    ``workers``: tokenizer processes of the building rank. ``settings``: ``max_tokens``, ``val_every``, ``seed``.
    """
    rank = distributed.rank()
    if rank == 0:
        build_cache(source, tokenizer, cache_dir, show_progress=show_progress, workers=workers, **settings)
    distributed.barrier()
    root = cache_root(source, tokenizer, cache_dir, **settings)
    if rank != 0 and local_rank() == 0 and not (root / "meta.json").is_file():
        print(f"[rank {rank}] token cache {root} is not on this node (--cache-dir is not shared with rank 0): "
              "building this node's copy", file=sys.stderr, flush=True)
        build_cache(source, tokenizer, cache_dir, show_progress=False, workers=workers, **settings)
    distributed.barrier()
    return open_cache(root)
