"""The process around a gapt-ds command: exit status, the process group's life, and the run's metadata.

Every entry point (``gapt-ds SUBCOMMAND``, ``python -m gapt_ds.train`` under a launcher,
``python -m gapt_ds.recipes.forgetting``, the benchmarks) goes through here:

    with process_group():               # env defaults, CPU set-up, init; barrier and teardown at exit
        write_run_meta(run_dir, ds_config, vars(args))
        ...

``run_main`` turns a user mistake (a ``ValueError``) into ``PROG: error: MESSAGE`` and exit status 2 (an
error with ``exit_code`` into that status), printed once when another rank reported it already;
``run_entry`` ends the process safely after collectives.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import sys
import traceback
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterator, NoReturn, Optional

# gapt_ds.distributed (and with it torch) is imported where it is used: --help must stay fast.
DEFAULT_MASTER_PORT = "29500"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """The ``gapt-ds`` help: defaults shown only where there is one to show (not ``None``/``False``, not
    twice), and the docstrings' reST backticks dropped."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text or not action.option_strings:
            return text
        return super()._get_help_string(action)

    def _format_text(self, text: str) -> str:
        return super()._format_text(_plain(text))

    def _expand_help(self, action: argparse.Action) -> str:
        return _plain(super()._expand_help(action))


def _plain(text: str) -> str:
    return re.sub(r"``?([^`]+)``?", r"\1", text)


def run_main(prog: str, main: Callable[[list[str]], Any], argv: Optional[list[str]] = None,
             show: bool = False) -> int:
    """Call ``main(argv)``; 0 on success (printing its result if ``show``), 2 on a ``ValueError``. An error
    with an ``exit_code`` (a signal stop, divergence, a collective timeout) exits with that code, its message
    as one line. Errors flagged ``same_on_every_rank`` (config checks, the agreed stop) are printed by rank 0
    only; any other by the rank that hit it."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        result = main(argv)
    except Exception as err:  # user mistakes (ValueError) and failures that explain themselves (exit_code)
        code = getattr(err, "exit_code", 2 if isinstance(err, ValueError) else None)
        if code is None:
            raise
        elsewhere = getattr(err, "reported_elsewhere", False)  # another rank printed it already
        if not elsewhere and (not getattr(err, "same_on_every_rank", False) or os.environ.get("RANK", "0") == "0"):
            print(f"{prog}: error: {err}{_foreign_origin(err)}", file=sys.stderr, flush=True)
        return code
    if show:
        print(result)
    return 0


def _foreign_origin(err: BaseException) -> str:
    """For a ``ValueError`` raised inside a dependency (not a gapt-ds check): where, with the traceback, since
    such a message alone (DeepSpeed's ``invalid literal for int()``) does not tell the user what failed."""
    frames = traceback.extract_tb(err.__traceback__)
    package = str(Path(__file__).parent)
    if not frames or frames[-1].filename.startswith(package) or hasattr(err, "exit_code"):
        return ""
    return (f"\n  (raised inside {frames[-1].filename}:{frames[-1].lineno}, not by a gapt-ds check; traceback:)\n"
            + "".join(traceback.format_exception(err)).rstrip())


@contextlib.contextmanager
def same_on_every_rank() -> Iterator[None]:
    """Mark a ``ValueError`` raised in the block as one that every rank hits alike (a bad argument, config or
    tokenizer): ``run_main`` then prints it once, on rank 0, and every rank exits 2."""
    try:
        yield
    except ValueError as err:
        err.same_on_every_rank = True
        raise


def run_entry(run: Callable[[], int]) -> NoReturn:
    """An entry point's process (the ``gapt-ds`` console script, ``python -m gapt_ds.train``, the forgetting
    recipe): ``run()`` for the exit code, then an exit that is safe for a training worker
    (``distributed.exit_process``)."""
    try:
        code = run()
    except SystemExit as stop:  # argparse's --help and usage errors
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    except KeyboardInterrupt:
        code = 130
    except BaseException:  # noqa: BLE001 - printed as Python would, then the same safe exit
        traceback.print_exc()
        code = 1
    if "gapt_ds.distributed" in sys.modules:  # this process may have run collectives
        from gapt_ds.distributed import exit_process

        exit_process(code)
    sys.exit(code)


def set_env_defaults(master_port: str = DEFAULT_MASTER_PORT) -> None:
    """What a launcher sets, for a process started without one: a single rank on this host."""
    for key, value in dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                           MASTER_PORT=master_port).items():
        os.environ.setdefault(key, value)


def prepare_process(master_port: str = DEFAULT_MASTER_PORT) -> None:
    """Before DeepSpeed starts: env defaults, no JIT build of DeepSpeed's CPU shm op, quiet known warnings."""
    from gapt_ds.deepspeed_compat import default_cuda_arch_list, skip_cpu_shm_build

    if os.environ.get("DS_ACCELERATOR") == "cpu":
        skip_cpu_shm_build()
    else:
        default_cuda_arch_list()
    quiet_known_noise()
    set_env_defaults(master_port)


# DeepSpeed's ZeRO calls these torch.distributed names (not gapt-ds), and torch deprecates them
_DEPRECATED_BY_TORCH = r"`torch\.distributed\.(all_gather_into_tensor|reduce_scatter_tensor)` is deprecated"
# DeepSpeed's warm-up schedulers warn when asked for the LR before their first step (the engine asks at init)
_LR_BEFORE_START = "Attempting to get learning rate from scheduler before it has started"


def quiet_known_noise() -> None:
    """Silence, by exact message, the warnings every run printed that are not the user's problem; all other
    warnings stay."""
    warnings.filterwarnings("ignore", message=_DEPRECATED_BY_TORCH, category=FutureWarning)
    logging.getLogger("DeepSpeed").addFilter(_drop_lr_before_start)


def _drop_lr_before_start(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith(_LR_BEFORE_START)


@contextlib.contextmanager
def process_group(master_port: str = DEFAULT_MASTER_PORT, timeout_minutes: Optional[float] = None) -> Iterator[None]:
    """``prepare_process``, then DeepSpeed's process group for the block. On success every rank meets at
    a barrier; in any case every group is shut down before the process exits (``destroy()`` the engines
    inside the block first: see ``GaptEngineMixin.destroy``). ``timeout_minutes`` bounds every collective
    of every group (DeepSpeed's default otherwise)."""
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    from gapt_ds import distributed

    prepare_process(master_port)
    if timeout_minutes is None:
        deepspeed.init_distributed()
    else:
        timeout = timedelta(minutes=timeout_minutes)
        distributed.set_default_timeout(timeout)
        deepspeed.init_distributed(timeout=timeout)
    get_accelerator().set_device(int(os.environ["LOCAL_RANK"]))  # as engines do; collectives may come first
    try:
        yield
        distributed.barrier()
    except BaseException as err:  # its frames would keep the engine, and so the process groups, alive
        traceback.clear_frames(err.__traceback__)
        raise
    finally:
        distributed.shutdown_process_groups()


def write_run_meta(run_dir: Path, ds_config: dict, args: dict) -> None:
    """Rank 0 writes ``run_dir/ds_config.json`` (the resolved config) and ``run_dir/args.json`` (the
    arguments, ``"recipe"`` included when a recipe ran it): what ``gapt-ds report``/``export`` read."""
    from gapt_ds import distributed

    if distributed.rank() != 0:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "ds_config.json").write_text(json.dumps(ds_config, indent=2))
    (run_dir / "args.json").write_text(json.dumps(args, indent=2))
