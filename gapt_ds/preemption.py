"""Stop cleanly on SIGTERM/SIGINT (Slurm preemption, ``scancel``, Ctrl-C): finish the step, save, exit.

A signal only sets a flag (``engine.request_stop()``). The flag rides on the step-statistics all-reduce
that every optimizer step already does, so all ranks learn of it after the same step (no extra
collective), save one checkpoint there and exit with ``128 + signal`` (143 for SIGTERM, 130 for SIGINT).
Further signals while stopping are ignored (the ``deepspeed`` launcher re-sends SIGTERM to its workers);
SIGKILL still ends the process at once.
"""

from __future__ import annotations

import contextlib
import signal
import sys
from typing import Callable, Iterator, Optional

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(Exception):
    """The run stopped early on a signal, after saving a checkpoint (every rank agrees: rank 0 prints it)."""

    same_on_every_rank = True

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class StopOnSignal:
    """Within ``installed()``, SIGTERM/SIGINT call ``request_stop`` once and record the signal."""

    def __init__(self, request_stop: Callable[[], None]) -> None:
        self.request_stop = request_stop
        self.signum: Optional[int] = None

    def _handle(self, signum, frame) -> None:
        if self.signum is None:
            self.signum = signum
            self.request_stop()
            print(f"gapt-ds: {signal.Signals(signum).name} received: finishing this optimizer step, then saving a "
                  "checkpoint and exiting", file=sys.stderr, flush=True)

    @property
    def exit_code(self) -> int:
        """128 + the signal this rank received (SIGTERM on ranks that only learned of the stop from another)."""
        return 128 + (self.signum or signal.SIGTERM)

    @contextlib.contextmanager
    def installed(self) -> Iterator["StopOnSignal"]:
        previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def stopped(self, step: int, ckpt_dir) -> Stopped:
        name = signal.Signals(self.exit_code - 128).name
        return Stopped(f"stopped by {name} after optimizer step {step}; checkpoint saved in {ckpt_dir}/step{step}; "
                       "continue with --resume", self.exit_code)
