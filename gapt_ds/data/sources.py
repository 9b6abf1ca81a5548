"""Text sources, read through `datasets` (streaming): a hub dataset, local files, or the arithmetic task.

Source specs (``--data``):
    hf:HuggingFaceFW/fineweb:sample-10BT     hub dataset NAME[:CONFIG], streamed (needs network)
    data/*.txt | data/*.jsonl | data/*.parquet   local files (jsonl/parquet: the "text" column)
    arithmetic                               generated multiplication problems (docs/algorithm.md §6.2), no download
"""

from __future__ import annotations

import glob
import hashlib
import os
from pathlib import Path
from typing import Iterator

BUILDERS = {".txt": "text", ".text": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
TEXT_COLUMN = "text"


def local_files(pattern: str) -> list[Path]:
    """Files matching a glob (comma-separated globs allowed), with clear errors for the usual mistakes."""
    globs = [os.path.expanduser(part) for part in pattern.split(",")]
    paths = sorted({Path(p) for part in globs for p in glob.glob(part, recursive=True)})
    if not paths:
        raise ValueError(f"--data {pattern!r}: no file matches")
    kinds = {p.suffix for p in paths}
    unknown = kinds - set(BUILDERS)
    if unknown:
        raise ValueError(f"--data {pattern!r}: unsupported file type(s) {sorted(unknown)}; use {sorted(BUILDERS)}")
    if len({BUILDERS[k] for k in kinds}) > 1:
        raise ValueError(f"--data {pattern!r} mixes file types {sorted(kinds)}; use one type per source")
    empty = [str(p) for p in paths if p.stat().st_size == 0]
    if empty:
        raise ValueError(f"--data: empty file(s): {', '.join(empty[:5])}")
    return paths


def source_fingerprint(spec: str) -> str:
    """Changes when the source's content may have changed (local files: names, sizes, mtimes)."""
    h = hashlib.sha1(spec.encode())
    if not (spec.startswith("hf:") or spec == "arithmetic" or spec.startswith("arithmetic:")):
        for p in local_files(spec):
            st = p.stat()
            h.update(f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def iter_texts(spec: str, split: str = "train", seed: int = 0) -> Iterator[str]:
    """Yield documents of a source spec (see module docstring)."""
    if spec == "arithmetic" or spec.startswith("arithmetic:"):
        from gapt_ds.data.arithmetic import Task, training_texts

        yield from training_texts(seed, task=Task.from_spec(spec))
        return
    from datasets import load_dataset

    if spec.startswith("hf:"):
        name, _, config = spec[3:].partition(":")
        if not name:
            raise ValueError(f"--data {spec!r}: expected hf:NAME[:CONFIG]")
        ds = load_dataset(name, config or None, split=split, streaming=True)
    else:
        paths = local_files(spec)
        builder = BUILDERS[paths[0].suffix]
        ds = load_dataset(builder, data_files=[str(p) for p in paths], split="train", streaming=True)
    for i, row in enumerate(ds):
        if TEXT_COLUMN not in row:
            raise ValueError(f"--data {spec!r}: rows have no {TEXT_COLUMN!r} column (columns: {sorted(row)})")
        text = row[TEXT_COLUMN]
        if text:
            yield text
