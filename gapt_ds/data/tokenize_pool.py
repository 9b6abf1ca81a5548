"""Tokenize a document stream on several processes, results in document order (so caches are byte-identical).

Documents are read in order by the caller's process and sent to a pool in chunks; at most ``2 x workers``
chunks are in flight, so a streamed source is never read ahead into memory. Each worker holds its own copy
of the tokenizer (pickled once, at start-up). With ``workers=1`` everything runs in-process.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections import deque
from itertools import islice
from typing import Iterable, Iterator

import numpy as np

CHUNK_DOCS = 256  # documents per task: large enough to amortise IPC, small enough to balance the pool

_tokenizer = None  # the worker's tokenizer (set by _init)


def default_workers() -> int:
    """``--tokenize-workers`` default: min(4, usable CPUs)."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(4, usable or 1))


def dtype_for(vocab_size: int) -> np.dtype:
    """The smallest unsigned type that holds every token id: uint16 up to 2^16 tokens, then uint32."""
    if vocab_size > 2**32:
        raise ValueError(f"vocabulary of {vocab_size} tokens does not fit the cache's uint32 ids")
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def encode_one(tokenizer, text: str, dtype: np.dtype) -> np.ndarray:
    """The ids of ``text`` plus EOS, as ``dtype``; an id outside the vocabulary is an error, never a wrap-around."""
    ids = np.asarray(tokenizer.encode(text) + [tokenizer.eos_id], dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= tokenizer.vocab_size):
        raise ValueError(f"tokenizer returned id {int(ids.max())} outside its vocabulary of {tokenizer.vocab_size}")
    return ids.astype(dtype)


def _init(tokenizer) -> None:
    global _tokenizer
    _tokenizer = tokenizer


def _encode_chunk(texts: list[str], dtype: str) -> list[np.ndarray]:
    return [encode_one(_tokenizer, t, np.dtype(dtype)) for t in texts]


def encode_documents(texts: Iterable[str], tokenizer, workers: int = 1) -> Iterator[np.ndarray]:
    """Each document's ids (EOS appended) in input order; the caller may stop early (the pool is torn down)."""
    dtype = dtype_for(tokenizer.vocab_size)
    if workers <= 1:
        for text in texts:
            yield encode_one(tokenizer, text, dtype)
        return
    it = iter(texts)
    # spawn: safe after threads (gloo, DeepSpeed) exist in this process, and the same on every OS
    with mp.get_context("spawn").Pool(workers, initializer=_init, initargs=(tokenizer,)) as pool:
        pending: deque = deque()
        while True:
            while len(pending) < 2 * workers:
                chunk = list(islice(it, CHUNK_DOCS))
                if not chunk:
                    break
                pending.append(pool.apply_async(_encode_chunk, (chunk, dtype.str)))
            if not pending:
                return
            yield from pending.popleft().get()
