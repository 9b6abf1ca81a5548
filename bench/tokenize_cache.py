"""Token-cache build throughput: tokens/s with 1 worker vs N workers, measured in one run, plus an identity check.

By default it generates a synthetic English-like corpus (Zipf-distributed pseudo-words, jsonl) and trains a
GPT-2-style byte-level BPE on it, so nothing is downloaded; pass --data and --tokenizer for your own. Runs are
interleaved (1, N, 1, N, ...) so machine load hits both alike; the medians are printed.

    .venv/bin/python bench/tokenize_cache.py                        # 1 vs 2 workers, ~12 MB of text
    .venv/bin/python bench/tokenize_cache.py --workers 4 --data 'corpus/*.jsonl' --tokenizer /data/gpt2_bpe
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path


def synthetic_corpus(directory: Path, docs: int, chars: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    words = ["".join(rng.choices(letters, k=rng.randint(1, 9))) for _ in range(20000)]
    weights = [1 / (i + 1) for i in range(len(words))]  # Zipf
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "corpus.jsonl", "w") as f:
        for _ in range(docs):
            text = []
            while sum(map(len, text)) < chars:
                sentence = rng.choices(words, weights, k=rng.randint(5, 20))
                text.append(" ".join(sentence).capitalize() + ".")
            f.write(json.dumps({"text": " ".join(text)}) + "\n")
    return str(directory / "corpus.jsonl")


def train_bpe(corpus: str, out: Path, vocab_size: int) -> str:
    from tokenizers import ByteLevelBPETokenizer

    from gapt_ds.data.sources import iter_texts

    bpe = ByteLevelBPETokenizer()
    texts = [t for _, t in zip(range(500), iter_texts(corpus))]
    bpe.train_from_iterator(texts, vocab_size=vocab_size, special_tokens=["<|endoftext|>"])
    out.mkdir(parents=True, exist_ok=True)
    bpe.save_model(str(out))
    return str(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=None, help="source spec (default: a generated corpus)")
    p.add_argument("--tokenizer", default=None, help="tokenizer spec (default: a BPE trained on the corpus)")
    p.add_argument("--docs", type=int, default=6000, help="generated documents")
    p.add_argument("--doc-chars", type=int, default=2000, help="characters per generated document")
    p.add_argument("--vocab", type=int, default=8000, help="vocabulary of the generated BPE")
    p.add_argument("--workers", type=int, default=2, help="compared with 1 worker")
    p.add_argument("--repeats", type=int, default=2, help="builds per setting (interleaved)")
    args = p.parse_args()

    from gapt_ds.data.cache import build_cache
    from gapt_ds.data.tokenizers import load_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = args.data or synthetic_corpus(tmp / "corpus", args.docs, args.doc_chars)
        tokenizer = load_tokenizer(args.tokenizer or train_bpe(data, tmp / "bpe", args.vocab))
        times: dict[int, list[float]] = {1: [], args.workers: []}
        built = {}
        for r in range(args.repeats):
            for w in times:
                t0 = time.perf_counter()
                built[w] = build_cache(data, tokenizer, str(tmp / f"cache-{w}-{r}"), show_progress=False, workers=w)
                times[w].append(time.perf_counter() - t0)
        tokens = sum(built[1].meta["tokens"].values())
        same = all((built[1].path / f).read_bytes() == (built[args.workers].path / f).read_bytes()
                   for f in ("train.bin", "val.bin", "meta.json"))
        rate = {w: tokens / statistics.median(ts) for w, ts in times.items()}
        print(f"{tokens:,} tokens, {built[1].meta['documents']:,} documents, vocabulary {tokenizer.vocab_size}")
        for w, ts in times.items():
            print(f"workers={w}: median {statistics.median(ts):.2f} s ({', '.join(f'{t:.2f}' for t in ts)}), "
                  f"{rate[w]:,.0f} tokens/s")
        print(f"speed-up {args.workers} vs 1 workers: {rate[args.workers] / rate[1]:.2f}x; caches identical: {same}")


if __name__ == "__main__":
    main()
