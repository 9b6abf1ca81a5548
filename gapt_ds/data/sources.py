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
import warnings
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
        yield from _texts(load_dataset(name, config or None, split=split, streaming=True), spec)
        return
    for path in local_files(spec):  # one file at a time, so an unreadable file is named
        yield from _file_texts(path)


def _file_texts(path: Path) -> Iterator[str]:
    from datasets import load_dataset

    try:
        rows = load_dataset(BUILDERS[path.suffix], data_files=[str(path)], split="train", streaming=True)
        yield from _texts(rows, str(path))
    except UnicodeDecodeError as err:
        raise ValueError(f"--data: {path} is not UTF-8 text (byte {err.object[err.start:err.start + 1]!r} at offset "
                         f"{err.start} of a line); convert it, e.g. iconv -f latin1 -t utf-8") from None
    except ValueError as err:
        if str(err).startswith("--data"):  # already ours
            raise
        raise ValueError(f"--data: cannot read {path} as {path.suffix[1:]}: {_first_line(err)}") from None
    except Exception as err:  # arrow/datasets errors for a broken or mislabelled file
        raise ValueError(f"--data: cannot read {path} as {path.suffix[1:]}: {type(err).__name__}: "
                         f"{_first_line(err)}") from None


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [""])[0][:300]


def _texts(rows, where: str) -> Iterator[str]:
    """The non-empty ``text`` of each row; rows without one are counted and reported in one warning."""
    missing = empty = 0
    for i, row in enumerate(rows):
        if TEXT_COLUMN not in row:
            raise ValueError(f"--data {where!r}: rows have no {TEXT_COLUMN!r} column (columns: {sorted(row)})")
        text = row[TEXT_COLUMN]
        if text is None:
            missing += 1
        elif not isinstance(text, str):
            raise ValueError(f"--data {where}: row {i + 1} has a {type(text).__name__} {TEXT_COLUMN!r} "
                             f"({text!r:.40}), not a string")
        elif not text:
            empty += 1
        else:
            yield text
    parts = [f"{missing} row(s) without {TEXT_COLUMN!r} (missing or null)" * bool(missing),
             f"{empty} row(s) with empty text" * bool(empty)]
    if missing or empty:
        warnings.warn(f"--data {where}: skipped {' and '.join(p for p in parts if p)}", stacklevel=2)
