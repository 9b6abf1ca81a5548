"""A checkpoint tag in DeepSpeed's universal form, for a resume on another number of ranks.

ZeRO 1-3 save the optimizer state (and under ZeRO-3 the weights) as one partition per data-parallel
rank, which only the same world size can load. DeepSpeed's converter (``ds_to_universal``) rewrites a
tag as one file per parameter and optimizer state; an engine built with ``"checkpoint":
{"load_universal": true}`` loads that on any world size. gapt-ds keeps the universal form inside its tag,
``step<N>/universal/`` (removed with the tag by ``--keep-last``), complete once it holds
``gapt_complete.json``. ZeRO-0 tags keep the whole optimizer state in one file: any world size loads them.

    gapt-ds universal RUN_DIR/checkpoints            # the latest complete tag; --tag step200 for another
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable, Optional

from gapt_ds.checkpoint import COMPLETE, tag_directory
from gapt_ds.runtime import HelpFormatter

UNIVERSAL = "universal"


def needs_universal(tag_dir: Path) -> bool:
    """Whether the tag's optimizer state is partitioned over ranks (ZeRO 1-3)."""
    return any(tag_dir.glob("*_optim_states.pt"))


def is_converted(tag_dir: Path) -> bool:
    return (tag_dir / UNIVERSAL / COMPLETE).is_file()


def convert(tag_dir: Path, say: Callable[[str], None] = print) -> Path:
    """``tag_dir/universal`` (converted now unless it is already complete). DeepSpeed's converter output is
    kept back and shown only if it fails. A conversion that fails or is killed leaves no complete form."""
    out = tag_dir / UNIVERSAL
    if is_converted(tag_dir):
        return out
    from gapt_ds.deepspeed_compat import to_universal
    from gapt_ds.safe_load import verify_tag

    if not needs_universal(tag_dir):
        raise ValueError(f"{tag_dir} has no ZeRO optimizer partitions (a ZeRO-0 checkpoint): any number of "
                         "ranks loads it as it is")
    verify_tag(tag_dir)  # the converter unpickles with weights_only=False
    tmp = tag_dir / f".{UNIVERSAL}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    say(f"converting {tag_dir} to DeepSpeed's universal checkpoint form ({out}) for a new world size")
    t0, log = time.perf_counter(), io.StringIO()
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            to_universal(str(tag_dir), str(tmp))
    except Exception as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ValueError(f"DeepSpeed's ds_to_universal could not convert {tag_dir}: {type(err).__name__}: {err}\n"
                         f"its output ended with:\n{log.getvalue()[-2000:]}") from None
    finally:
        (tag_dir / "latest_universal").unlink(missing_ok=True)  # the converter's; gapt-ds names the tag
    (tmp / COMPLETE).write_text(json.dumps({"source": tag_dir.name, "converted_at": time.time()}))
    shutil.rmtree(out, ignore_errors=True)  # an incomplete earlier attempt
    os.replace(tmp, out)
    say(f"converted {tag_dir.name} in {time.perf_counter() - t0:.1f} s")
    return out


def main(argv: Optional[list[str]] = None) -> str:
    """``gapt-ds universal``: convert a checkpoint offline (``--resume`` on another world size does it too)."""
    p = argparse.ArgumentParser(prog="gapt-ds universal", formatter_class=HelpFormatter,
                                description="Write a checkpoint's universal form, which `--resume` loads on "
                                            "another number of ranks (it converts by itself when needed).")
    p.add_argument("checkpoint_dir", help="`RUN_DIR/checkpoints`")
    p.add_argument("--tag", default=None, help="checkpoint tag, e.g. step200 (default: the 'latest' one)")
    args = p.parse_args(argv)
    tag_dir = tag_directory(Path(args.checkpoint_dir), args.tag)
    if is_converted(tag_dir):
        return f"{tag_dir / UNIVERSAL} is already complete"
    return str(convert(tag_dir))
