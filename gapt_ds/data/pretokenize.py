"""Build the token cache ahead of training, once, on one machine: the path for FineWeb-size sources.

    python -m gapt_ds.data.pretokenize --data 'hf:HuggingFaceFW/fineweb:sample-10BT' --tokenizer /data/gpt2_bpe \\
        --max-tokens 800000000 --cache-dir /shared/gapt-cache --tokenize-workers 16

Then train with the same ``--data``, ``--tokenizer``, ``--max-tokens``, ``--val-every``, ``--seed`` and
``--cache-dir``: the cache key matches, so no rank downloads or tokenizes anything. Copy the printed
directory to each node's disk instead if ``--cache-dir`` is not shared.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional

from gapt_ds.data.cache import build_cache
from gapt_ds.data.tokenize_pool import default_workers
from gapt_ds.data.tokenizers import load_tokenizer


def main(argv: Optional[list[str]] = None) -> int:
    from gapt_ds.train import build_parser

    train_defaults = build_parser()
    p = argparse.ArgumentParser(prog="python -m gapt_ds.data.pretokenize", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", required=True, help="source spec, as for gapt-ds train")
    p.add_argument("--tokenizer", required=True, help="tokenizer spec, as for gapt-ds train")
    p.add_argument("--cache-dir", required=True, help="cache root to train with (--cache-dir of gapt-ds train)")
    for name in ("max_tokens", "val_every", "seed"):  # the cache key: the same defaults as gapt-ds train
        flag = "--" + name.replace("_", "-")
        p.add_argument(flag, type=int, default=train_defaults.get_default(name), help=f"as {flag} of gapt-ds train")
    p.add_argument("--tokenize-workers", type=int, default=default_workers(), help="tokenizer processes")
    args = p.parse_args(argv)
    if args.tokenize_workers < 1:
        p.error(f"--tokenize-workers must be >= 1, got {args.tokenize_workers}")
    cache = build_cache(args.data, load_tokenizer(args.tokenizer), args.cache_dir, args.max_tokens, args.val_every,
                        args.seed, workers=args.tokenize_workers)
    print(json.dumps({"cache": str(cache.path), "tokens": cache.meta["tokens"], "documents": cache.meta["documents"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
