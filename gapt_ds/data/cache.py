"""Pre-tokenize a source once into a binary token cache that every rank memory-maps.

Layout: ``CACHE_DIR/<key>/{train.bin, val.bin, meta.json}``; the key hashes the source, the tokenizer
fingerprint and the limits, so a changed input never reuses a stale cache. Documents are joined with
the tokenizer's EOS token. Every ``val_every``-th document goes to the validation split. Rank 0
writes (atomically, via a temporary directory), the other ranks wait at a barrier.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import closing  # stops the tokenizer pool as soon as max_tokens ends the loop
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from tqdm import tqdm

from gapt_ds.data.sources import iter_texts, source_fingerprint
from gapt_ds.data.tokenize_pool import dtype_for, encode_documents


@dataclass(frozen=True)
class TokenCache:
    path: Path
    meta: dict

    def split(self, name: str) -> np.ndarray:
        """The ``train`` or ``val`` tokens as a read-only memmap."""
        return np.memmap(self.path / f"{name}.bin", dtype=self.meta["dtype"], mode="r")


def cache_key(source: str, tokenizer, max_tokens: Optional[int], val_every: int, seed: int) -> str:
    parts = [source_fingerprint(source), tokenizer.fingerprint(), str(max_tokens), str(val_every), str(seed)]
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:16]


def cache_root(source: str, tokenizer, cache_dir: str, max_tokens: Optional[int] = None, val_every: int = 50,
               seed: int = 0) -> Path:
    """The directory ``build_cache`` writes for these settings (complete once it holds ``meta.json``)."""
    return Path(cache_dir) / cache_key(source, tokenizer, max_tokens, val_every, seed)


def build_cache(source: str, tokenizer, cache_dir: str, max_tokens: Optional[int] = None, val_every: int = 50,
                seed: int = 0, show_progress: bool = True, workers: int = 1) -> TokenCache:
    """Tokenize ``source`` into the cache (or reuse it); call on one rank per filesystem (see ``cache_sync``).

    ``workers`` > 1 tokenizes on that many processes; the cache is byte-identical to ``workers=1``.
    """
    root = cache_root(source, tokenizer, cache_dir, max_tokens, val_every, seed)
    if (root / "meta.json").is_file():
        return open_cache(root)
    dtype = str(dtype_for(tokenizer.vocab_size))
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=".tmp-"))
    counts = {"train": 0, "val": 0}
    docs = 0
    try:
        encoded = encode_documents(iter_texts(source, seed=seed), tokenizer, workers)
        with open(tmp / "train.bin", "wb") as train, open(tmp / "val.bin", "wb") as val, closing(encoded):
            bar = tqdm(desc=f"tokenizing {source}", unit=" tok", unit_scale=True, disable=not show_progress)
            for i, ids in enumerate(encoded):
                split = "val" if val_every and i % val_every == val_every - 1 else "train"
                (val if split == "val" else train).write(ids.tobytes())
                counts[split] += len(ids)
                docs += 1
                bar.update(len(ids))
                if max_tokens and counts["train"] >= max_tokens:
                    break
            bar.close()
        if counts["train"] == 0:
            raise ValueError(f"--data {source!r} produced no tokens (empty documents?)")
        meta = {"source": source, "tokenizer": tokenizer.fingerprint(), "vocab_size": tokenizer.vocab_size,
                "eos_id": tokenizer.eos_id, "dtype": dtype, "documents": docs, "tokens": counts}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        os.replace(tmp, root) if not root.exists() else shutil.rmtree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return open_cache(root)


def open_cache(root: Path) -> TokenCache:
    meta_file = root / "meta.json"
    if not meta_file.is_file():
        raise ValueError(f"token cache {root} is incomplete (no meta.json); delete it and rebuild")
    meta = json.loads(meta_file.read_text())
    if meta.get("dtype") not in ("uint16", "uint32"):  # np.memmap of "object" would read raw bytes as pointers
        raise ValueError(f"{meta_file}: dtype {meta.get('dtype')!r} is not uint16/uint32: not a gapt-ds token cache")
    itemsize = np.dtype(meta["dtype"]).itemsize
    for split, n in meta["tokens"].items():
        size = (root / f"{split}.bin").stat().st_size
        if size != n * itemsize:
            raise ValueError(f"token cache {root / (split + '.bin')} has {size} bytes, expected {n * itemsize}: "
                             "truncated; delete the directory to rebuild it")
    return TokenCache(root, meta)
