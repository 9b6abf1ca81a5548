"""``gapt-ds`` command line: ``train``, ``tokenizer``, ``recipe``, ``sweep``, ``report``, ``export``, ``universal``.

    gapt-ds train --deepspeed_config ds_configs/cpu_default.json --data arithmetic --steps 300
    gapt-ds tokenizer --data 'corpus/*.txt' --vocab-size 8000 --out runs/tok/spm
    gapt-ds recipe arithmetic --seeds 0,1,2 --out runs/arithmetic
    gapt-ds sweep forgetting --grid gapt.mbe_weight=0.3,1,3 --seeds 0-9 --out runs/sweep_forgetting
    gapt-ds report runs/arithmetic/*-s* --out runs/arithmetic/report
    gapt-ds export runs/demo/checkpoints runs/demo/hf
    gapt-ds universal runs/demo/checkpoints     # before resuming on another number of ranks (--resume also does it)
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn, Optional

from gapt_ds.runtime import HelpFormatter, run_entry, run_main


def tokenizer_main(argv: list[str]) -> str:
    p = argparse.ArgumentParser(prog="gapt-ds tokenizer", description="Train a SentencePiece tokenizer on local text.",
                                formatter_class=HelpFormatter)
    p.add_argument("--data", required=True, help="local glob of .txt/.jsonl/.parquet files (or hf:NAME[:CONFIG])")
    p.add_argument("--vocab-size", type=int, default=8000, help="tokens in the vocabulary (the model's vocab_size)")
    p.add_argument("--model-type", default="bpe", choices=["bpe", "unigram"], help="SentencePiece algorithm")
    p.add_argument("--out", required=True, help="output prefix: writes PREFIX.model and PREFIX.vocab")
    args = p.parse_args(argv)
    from gapt_ds.data.sources import iter_texts
    from gapt_ds.data.tokenizers import train_sentencepiece

    return train_sentencepiece(iter_texts(args.data), args.out, args.vocab_size, args.model_type)


COMMANDS = {
    "train": "pretrain a GPT-2 with GAPT under DeepSpeed",
    "tokenizer": "train a SentencePiece tokenizer",
    "recipe": "run a paper experiment: baseline vs GAPT over seeds, then report",
    "sweep": "a grid over config keys/flags x arms x seeds, with paired statistics",
    "report": "plots and a comparison table from run directories",
    "export": "a training checkpoint as a Hugging Face GPT-2 directory",
    "universal": "a checkpoint in DeepSpeed's universal form (resume on another number of ranks)",
}


def usage() -> str:
    lines = ["usage: gapt-ds {" + ",".join(COMMANDS) + "} ...   (gapt-ds COMMAND --help: its options)",
             *(f"  {k:10} {v}" for k, v in COMMANDS.items()), "  --version  print the version"]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv and argv[0] == "--version":
        from gapt_ds import __version__

        print(f"gapt-ds {__version__}")
        return 0
    if not argv or argv[0] not in COMMANDS:
        problem = f"unknown command {argv[0]!r}" if argv else "no command given"
        print(f"{usage()}\ngapt-ds: error: {problem}", file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    command_main, show_result = _COMMAND_MAINS[command]()
    return run_main(f"gapt-ds {command}", command_main, rest, show=show_result)


def _train():
    from gapt_ds.train import main

    return main, False


def _recipe():
    from gapt_ds.recipes.run import run_recipe

    return run_recipe, False


def _sweep():
    from gapt_ds.sweep import main

    return main, False  # it prints its own progress and the report's path


def _report():
    from gapt_ds.report import main

    return main, True


def _export():
    from gapt_ds.export import main

    return main, True


def _universal():
    from gapt_ds.universal import main

    return main, True


# each subcommand's (main, print its result?), imported on use: DeepSpeed is slow to import
_COMMAND_MAINS = {"train": _train, "tokenizer": lambda: (tokenizer_main, True), "recipe": _recipe,
                  "sweep": _sweep, "report": _report, "export": _export, "universal": _universal}


def entry(argv: Optional[list[str]] = None) -> NoReturn:
    """The ``gapt-ds`` console script: ``main``, then an exit that is safe for a training worker."""
    run_entry(lambda: main(argv))


if __name__ == "__main__":
    entry()
