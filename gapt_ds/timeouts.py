"""Name the collective and the step when a distributed call times out (``--dist-timeout``).

A frozen or dead rank leaves the others blocked in a collective until the process group's timeout;
the backend's error then says only "timed out waiting for recv". ``collective_context`` turns it into
``CollectiveTimeout``, whose message names what this rank was doing and at which optimizer step.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, Optional

_TIMEOUT_WORDS = ("timed out", "timeout", "time out")


class CollectiveTimeout(RuntimeError):
    """A collective did not complete within the process group's timeout."""

    exit_code = 1


def _is_timeout(err: BaseException) -> bool:
    text = str(err).lower()
    return any(w in text for w in _TIMEOUT_WORDS)


@contextlib.contextmanager
def collective_context(what: str, step: Optional[int] = None) -> Iterator[None]:
    """Re-raise a timeout inside the block as ``CollectiveTimeout`` naming ``what`` and ``step``.
    Nested contexts keep the innermost (most precise) description."""
    try:
        yield
    except CollectiveTimeout:
        raise
    except RuntimeError as err:  # gloo/NCCL errors (torch's DistBackendError is a RuntimeError)
        if not _is_timeout(err):
            raise
        at = f" of optimizer step {step}" if step is not None else ""
        rank = os.environ.get("RANK", "?")
        raise CollectiveTimeout(
            f"rank {rank} timed out in the {what}{at}: another rank is frozen, dead or far slower "
            f"(raise --dist-timeout if this is expected). Backend: {str(err).splitlines()[0][:200]}") from None

