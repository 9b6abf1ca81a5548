"""Arguments made safe for DeepSpeed's pdsh runner, which hands them to a shell on every node.

DeepSpeed's ``PDSHRunner`` joins the training script's arguments into one remote command line and wraps an
argument in double quotes only when it contains a space. Inside double quotes the remote shell still expands
``$``, backticks and ``\\``; without quotes it also runs ``;``/``|``/``&``, redirects and expands globs. So a run
directory named ``runs/$(rm -rf ~)`` would be executed on every node. :func:`remote_safe` refuses the characters
that no quoting survives this and single-quotes every other argument the shell would interpret.

    python -m gapt_ds.launch_args ARG...    # one remote-safe argument per line, or exit 2 naming the problems
"""

from __future__ import annotations

import re
import sys

PLAIN = re.compile(r"[A-Za-z0-9_@%+=:,./-]+")  # nothing the shell interprets
NEVER = {"$": "$", "`": "backtick", "\\": "backslash", '"': "double quote", "'": "single quote",
         "\n": "newline", "\r": "carriage return", "\t": "tab"}


def remote_safe(args: list[str]) -> list[str]:
    """``args`` as DeepSpeed's pdsh runner must receive them to reach the remote script unchanged.

    Raises ValueError listing every argument with a character the remote shell would interpret in any quoting.
    """
    problems = []
    for a in args:
        bad = [name for ch, name in NEVER.items() if ch in a]
        if bad:
            problems.append(f"{a!r} contains {', '.join(bad)}")
    if problems:
        raise ValueError("arguments a remote shell would interpret (DeepSpeed's pdsh runner passes them to one "
                         "on every node); rename or use the no-ssh form (NO_SSH=1):\n  " + "\n  ".join(problems))
    # DeepSpeed double-quotes arguments with a space itself: what is left inside double quotes is inert.
    return [a if PLAIN.fullmatch(a) or " " in a else f"'{a}'" for a in args]


def main(argv: list[str]) -> int:
    try:
        safe = remote_safe(argv)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("\n".join(safe))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
