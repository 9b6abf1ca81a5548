"""``gapt-ds`` command line: ``train``, ``tokenizer``, ``recipe``, ``report``, ``export``.

    gapt-ds train --deepspeed_config ds_configs/cpu_default.json --data arithmetic --steps 300
    gapt-ds tokenizer --data 'corpus/*.txt' --vocab-size 8000 --out runs/tok/spm
    gapt-ds recipe arithmetic --seeds 0,1,2 --out runs/arithmetic
    gapt-ds report runs/arithmetic/*-s* --out runs/arithmetic/report
    gapt-ds export runs/demo/checkpoints runs/demo/hf
"""

from __future__ import annotations

import argparse
import sys
import traceback
from typing import NoReturn, Optional


def tokenizer_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="gapt-ds tokenizer", description="Train a SentencePiece tokenizer on local text.")
    p.add_argument("--data", required=True, help="local glob of .txt/.jsonl/.parquet files (or hf:NAME[:CONFIG])")
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--model-type", default="bpe", choices=["bpe", "unigram"])
    p.add_argument("--out", required=True, help="output prefix: writes PREFIX.model and PREFIX.vocab")
    args = p.parse_args(argv)
    from gapt_ds.data.sources import iter_texts
    from gapt_ds.data.tokenizers import train_sentencepiece

    path = train_sentencepiece(iter_texts(args.data), args.out, args.vocab_size, args.model_type)
    print(path)
    return 0


COMMANDS = {
    "train": "pretrain a GPT-2 with GAPT under DeepSpeed",
    "tokenizer": "train a SentencePiece tokenizer",
    "recipe": "run a paper experiment: baseline vs GAPT over seeds, then report",
    "report": "plots and a comparison table from run directories",
    "export": "a training checkpoint as a Hugging Face GPT-2 directory",
}


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        usage = "usage: gapt-ds {" + ",".join(COMMANDS) + "} ...\n" + "\n".join(f"  {k:10} {v}" for k, v in COMMANDS.items())
        print(usage, file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    command, rest = argv[0], argv[1:]
    try:
        if command == "train":
            from gapt_ds.train import main as train_main

            train_main(rest)
        elif command == "recipe":
            from gapt_ds.recipes.run import run_recipe

            run_recipe(rest)
        elif command == "report":
            from gapt_ds.report import main as report_main

            print(report_main(rest))
        elif command == "export":
            from gapt_ds.export import main as export_main

            print(export_main(rest))
        else:
            return tokenizer_main(rest)
        return 0
    except ValueError as err:
        print(f"gapt-ds {command}: error: {err}", file=sys.stderr)
        return 2


def entry(argv: Optional[list[str]] = None) -> NoReturn:
    """The ``gapt-ds`` console script (and ``python -m gapt_ds.train``): ``main``, then an exit that is
    safe for a training worker (``distributed.exit_process``)."""
    try:
        code = main(argv)
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


if __name__ == "__main__":
    entry()
