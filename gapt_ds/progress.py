"""Rank 0's console output during ``gapt-ds train``: a progress bar on a terminal; in a log file (not a
TTY) a plain line every ``every_s`` seconds instead of one ever-growing ``\\r`` line; evaluation lines
always (also with ``--no-progress``, which drops only the per-step output)."""

from __future__ import annotations

import sys
import time
from typing import Any, Optional, TextIO


class Progress:
    def __init__(self, total: int, initial: int, steps: bool = True, stream: Optional[TextIO] = None,
                 every_s: float = 30.0) -> None:
        self.total, self.stream, self.every_s = total, stream or sys.stderr, every_s
        self.steps = steps
        self.bar: Any = None
        self._last_line = -float("inf")
        if steps and self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc="gapt-ds", unit="step", dynamic_ncols=True,
                            mininterval=0.5, file=self.stream)

    def step(self, step: int, **fields: str) -> None:
        """After optimizer step ``step`` (1-based), with its scalars already formatted."""
        if self.bar is not None:
            self.bar.set_postfix(**fields)
            self.bar.update(1)
        elif self.steps and (step == self.total or time.monotonic() - self._last_line >= self.every_s):
            self._last_line = time.monotonic()
            self.write(f"step {step}/{self.total}: " + ", ".join(f"{k}={v}" for k, v in fields.items()))

    def write(self, line: str) -> None:
        """A line of its own (an evaluation), printed whatever the progress setting."""
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
