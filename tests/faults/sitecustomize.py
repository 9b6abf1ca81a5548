"""Test-only fault injection (and instrumentation) for subprocesses started with this directory on PYTHONPATH.

GAPT_TEST_ENOSPC="TAG:RANK": on rank RANK, ``torch.save`` of any file inside checkpoint tag TAG writes a
few bytes and then fails as a full disk does (OSError ENOSPC), like a real write running out of space.
"""

import os

_spec = os.environ.get("GAPT_TEST_ENOSPC")
if _spec and os.environ.get("RANK") == _spec.split(":")[1]:
    import errno

    import torch

    _tag, _real_save = _spec.split(":")[0], torch.save

    def _save(obj, f, *args, **kwargs):
        if isinstance(f, (str, os.PathLike)) and f"{os.sep}{_tag}{os.sep}" in os.fspath(f):
            with open(f, "wb") as out:
                out.write(b"PK\x03\x04 partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(f))
        return _real_save(obj, f, *args, **kwargs)

    torch.save = _save

# GAPT_TEST_DATA_LOG=DIR: every PackedBatches.batch_at call appends {consumed, world, indices} (the sequence
# indices this rank reads) to DIR/rank<R>-<pid>.jsonl: the data order a real run read.
_data_log = os.environ.get("GAPT_TEST_DATA_LOG")
if _data_log:
    import json

    from gapt_ds.data import batches as _batches

    _batch_at = _batches.PackedBatches.batch_at

    def _logged_batch_at(self, consumed):
        row = {"consumed": consumed, "world": self.world, "indices": self.indices(consumed)}
        with open(os.path.join(_data_log, f"rank{self.rank}-{os.getpid()}.jsonl"), "a") as f:
            f.write(json.dumps(row) + "\n")
        return _batch_at(self, consumed)

    _batches.PackedBatches.batch_at = _logged_batch_at
