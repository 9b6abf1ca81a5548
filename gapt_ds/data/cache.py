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
import warnings
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
        """The ``train`` or ``val`` tokens as a read-only memmap (empty array for an empty split)."""
        if self.meta["tokens"][name] == 0:  # numpy cannot memory-map an empty file
            return np.zeros(0, dtype=self.meta["dtype"])
        return np.memmap(self.path / f"{name}.bin", dtype=self.meta["dtype"], mode="r")

    def check_vocab(self, vocab_size: int) -> None:
        """Every token id must index the model's embedding: a clear error instead of torch's IndexError."""
        for name in ("train", "val"):
            tokens = self.split(name)
            top = max((int(tokens[i : i + CHUNK].max()) for i in range(0, len(tokens), CHUNK)), default=-1)
            if top >= vocab_size:
                raise ValueError(f"token cache {self.path / (name + '.bin')} holds token id {top}, outside the model's "
                                 f"vocabulary of {vocab_size}: a corrupt cache or another tokenizer's; delete "
                                 f"{self.path} to rebuild it")


CHUNK = 1 << 26  # tokens per max() pass of ``check_vocab`` (bounded memory)
META_KEYS = {"dtype": str, "tokens": dict}  # what reading the cache needs


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
            why = (f"all {docs} documents went to the validation split (--val-every {val_every}); use a larger "
                   "--val-every" if docs else "it has no documents with text")
            raise ValueError(f"--data {source!r} gave no training tokens: {why}")
        if val_every and docs < val_every:
            warnings.warn(f"--data {source!r} has {docs} documents, fewer than --val-every {val_every}: the "
                          "validation split is empty (no validation CE); lower --val-every for one", stacklevel=2)
        meta = {"source": source, "tokenizer": tokenizer.fingerprint(), "vocab_size": tokenizer.vocab_size,
                "eos_id": tokenizer.eos_id, "dtype": dtype, "documents": docs, "tokens": counts}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        os.replace(tmp, root) if not root.exists() else shutil.rmtree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return open_cache(root)


def _read_meta(meta_file: Path) -> dict:
    """``meta.json``, checked: a clear error (and how to fix it) instead of a KeyError deep in training."""
    try:
        meta = json.loads(meta_file.read_text())
        problems = [] if isinstance(meta, dict) else ["not a JSON object"]
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        meta, problems = {}, [f"not valid JSON ({err})"]
    if not problems:
        problems = [f"{k!r} missing or not {t.__name__}" for k, t in META_KEYS.items()
                    if not isinstance(meta.get(k), t)]
    if not problems and meta["dtype"] not in ("uint16", "uint32"):  # np.memmap of "object" reads bytes as pointers
        problems = [f"dtype {meta['dtype']!r} is not uint16/uint32: not a gapt-ds token cache"]
    if not problems and not all(isinstance(meta["tokens"].get(k), int) for k in ("train", "val")):
        problems = ["'tokens' must hold the train and val token counts"]
    if problems:
        raise ValueError(f"token cache file {meta_file} is invalid: {'; '.join(problems)}; delete "
                         f"{meta_file.parent} to rebuild it")
    return meta


def open_cache(root: Path) -> TokenCache:
    meta_file = root / "meta.json"
    if not meta_file.is_file():
        raise ValueError(f"token cache {root} is incomplete (no meta.json); delete it and rebuild")
    meta = _read_meta(meta_file)
    itemsize = np.dtype(meta["dtype"]).itemsize
    for split, n in meta["tokens"].items():
        size = (root / f"{split}.bin").stat().st_size
        if size != n * itemsize:
            raise ValueError(f"token cache {root / (split + '.bin')} has {size} bytes, expected {n * itemsize}: "
                             "truncated; delete the directory to rebuild it")
    return TokenCache(root, meta)
