"""The token cache at scale: parallel tokenization (byte-identical), large vocabularies, > 2^32 tokens."""

import json
import pickle
import random

import numpy as np
import pytest
import torch

from gapt_ds.data import tokenize_pool
from gapt_ds.data.batches import PackedBatches
from gapt_ds.data.cache import build_cache, open_cache
from gapt_ds.data.tokenize_pool import dtype_for, encode_one
from gapt_ds.data.tokenizers import CharTokenizer, load_tokenizer, train_sentencepiece

WORDS = "the of and to in memorization compression phase gate entropy model token layer".split()


def corpus(path, docs=300, seed=0):
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(docs):
            f.write(json.dumps({"text": " ".join(rng.choices(WORDS, k=rng.randint(3, 60)))}) + "\n")
    return str(path)


def gpt2_bpe(directory):
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([" ".join(WORDS)] * 50, vocab_size=300, special_tokens=["<|endoftext|>"])
    directory.mkdir()
    bpe.save_model(str(directory))
    return load_tokenizer(str(directory))


def files(cache):
    return {f: (cache.path / f).read_bytes() for f in ("train.bin", "val.bin", "meta.json")}


@pytest.mark.parametrize("max_tokens", [None, 2500])
def test_parallel_tokenization_gives_a_byte_identical_cache(tmp_path, monkeypatch, max_tokens):
    data = corpus(tmp_path / "c.jsonl")
    tok = gpt2_bpe(tmp_path / "bpe")
    monkeypatch.setattr(tokenize_pool, "CHUNK_DOCS", 7)  # many chunks in flight, out of order completion possible
    one = build_cache(data, tok, str(tmp_path / "one"), max_tokens=max_tokens, val_every=3, show_progress=False)
    two = build_cache(data, tok, str(tmp_path / "two"), max_tokens=max_tokens, val_every=3, show_progress=False,
                      workers=2)
    assert files(one) == files(two)
    assert one.meta["documents"] == (300 if max_tokens is None else one.meta["documents"])
    if max_tokens:
        assert max_tokens <= one.meta["tokens"]["train"] < max_tokens + 200 and one.meta["documents"] < 300


def test_tokenizers_cross_to_worker_processes(tmp_path):
    spm_model = train_sentencepiece([" ".join(WORDS)] * 200, str(tmp_path / "spm"), vocab_size=320)
    for tok in (load_tokenizer(spm_model), gpt2_bpe(tmp_path / "bpe"), CharTokenizer()):
        copy = pickle.loads(pickle.dumps(tok))
        text = "12x3=36\n" if isinstance(tok, CharTokenizer) else "the gate entropy of memorization"
        assert copy.encode(text) == tok.encode(text) and copy.fingerprint() == tok.fingerprint()
        assert copy.decode(copy.encode(text)) == text
    bpe = gpt2_bpe(tmp_path / "bpe2")
    text = " memorization, and Compression!  phase\n\ttoken " * 3
    assert bpe.encode(text) == bpe.tok.encode(text)  # the Rust path is what transformers returns


def test_cache_dtype_switches_to_uint32_past_65536_tokens(tmp_path):
    assert dtype_for(2**16) == np.uint16 and dtype_for(2**16 + 1) == np.uint32
    with pytest.raises(ValueError, match="does not fit"):
        dtype_for(2**32 + 1)
    alphabet = "".join(chr(c) for c in range(0x20, 0x20 + 70_000) if not 0xD800 <= c < 0xE000) + "\n"
    tok = CharTokenizer(alphabet)
    text = alphabet[-2] + alphabet[65_535] + alphabet[65_536] + alphabet[0]  # ids 69999, 65535, 65536, 0
    (tmp_path / "d.txt").write_text(text + "\n" + text + "\n")
    cache = build_cache(str(tmp_path / "d.txt"), tok, str(tmp_path / "cache"), val_every=0, show_progress=False)
    train = cache.split("train")
    assert train.dtype == np.uint32 and cache.meta["vocab_size"] > 2**16
    assert train[:5].tolist() == [len(alphabet) - 2, 65_535, 65_536, 0, tok.eos_id]
    edge = CharTokenizer(alphabet[: 2**16 - 1] + "\n")  # exactly 65,536 tokens: uint16 holds id 65,535
    assert encode_one(edge, edge.alphabet[-2], dtype_for(edge.vocab_size)).tolist() == [65_534, 65_535]


def test_ids_outside_the_vocabulary_are_an_error_not_a_wrap_around():
    class Broken(CharTokenizer):
        def encode(self, text):
            return [self.vocab_size]  # one past the end: stored as-is it would index past the embedding

    with pytest.raises(ValueError, match="outside its vocabulary of 13"):
        encode_one(Broken(), "1", dtype_for(13))


def test_cache_of_more_than_2_pow_32_tokens_is_addressed_exactly(tmp_path):
    """A sparse 8.6 GB uint16 cache (> 2^32 tokens, > 2^33 bytes): sizes, batches and offsets stay exact."""
    seq, n_tokens = 4096, 2**32 + 3 * 4096
    root = tmp_path / "big"
    root.mkdir()
    marker_seq = n_tokens // seq - 1  # the last sequence: starts past token 2^32
    assert marker_seq * seq > 2**32
    with open(root / "train.bin", "wb") as f:
        f.truncate(n_tokens * 2)  # sparse: no disk used
        f.seek(marker_seq * seq * 2)
        f.write(np.arange(seq, dtype=np.uint16).tobytes())
    (root / "val.bin").write_bytes(b"")
    (root / "meta.json").write_text(json.dumps({"dtype": "uint16", "tokens": {"train": n_tokens, "val": 0}}))
    cache = open_cache(root)
    train = cache.split("train")
    assert len(train) == n_tokens and (root / "train.bin").stat().st_size > 2**33
    world, micro = 2, 4
    batches = [PackedBatches(train, seq, micro, rank=r, world=world, seed=5) for r in range(world)]
    assert batches[0].num_sequences == n_tokens // seq
    k = int((batches[0]._permutation(0) == marker_seq).nonzero())  # where the epoch visits the last sequence
    j, rank, row = k // (micro * world), (k % (micro * world)) // micro, k % micro
    got = batches[rank].batch_at(j * world * micro)[row]
    assert torch.equal(got, torch.arange(seq, dtype=torch.int64))
    with open(root / "train.bin", "r+b") as f:
        f.truncate(n_tokens * 2 - 2)
    with pytest.raises(ValueError, match="truncated"):
        open_cache(root)



def test_pretokenized_cache_is_the_one_training_opens(tmp_path, capsys):
    from gapt_ds.data.cache import cache_root
    from gapt_ds.data.pretokenize import main as pretokenize
    from gapt_ds.train import parse_args

    data, tok = corpus(tmp_path / "c.jsonl", docs=40), gpt2_bpe(tmp_path / "bpe")
    common = ["--data", data, "--tokenizer", str(tmp_path / "bpe"), "--cache-dir", str(tmp_path / "cache"),
              "--max-tokens", "500"]
    assert pretokenize([*common, "--tokenize-workers", "1"]) == 0
    built = json.loads(capsys.readouterr().out)
    (tmp_path / "ds.json").write_text("{}")
    args = parse_args(["--deepspeed_config", str(tmp_path / "ds.json"), *common])
    expected = cache_root(args.data, tok, args.cache_dir, args.max_tokens, args.val_every, args.seed)
    assert built["cache"] == str(expected) and (expected / "meta.json").is_file()
    assert built["tokens"]["train"] >= 500
