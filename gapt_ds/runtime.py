"""The process around a gapt-ds command: exit status and user-error reporting.

``run_main`` is what every entry point (``gapt-ds SUBCOMMAND``, ``python -m gapt_ds.train`` under a
launcher, ``python -m gapt_ds.recipes.forgetting``) runs its ``main`` through, so a user mistake
(a ``ValueError``) always ends as ``PROG: error: MESSAGE`` on stderr with exit status 2.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Optional


def run_main(prog: str, main: Callable[[list[str]], Any], argv: Optional[list[str]] = None,
             show: bool = False) -> int:
    """Call ``main(argv)``; 0 on success (printing its result if ``show``), 2 on a ``ValueError``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        result = main(argv)
    except ValueError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    if show:
        print(result)
    return 0
