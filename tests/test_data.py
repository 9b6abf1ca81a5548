"""Sources, tokenizers, token cache, packed batches and the arithmetic task, on data the tests generate."""

import json
import math
import random

import numpy as np
import pytest
import torch

from gapt_ds.data import sources
from gapt_ds.data.arithmetic import answer_batch, answer_metrics, eval_examples, training_texts
from gapt_ds.data.batches import PackedBatches, eval_batches
from gapt_ds.data.cache import build_cache
from gapt_ds.data.tokenizers import CharTokenizer, load_tokenizer, train_sentencepiece

WORDS = "the of and to in memorization compression phase gate entropy model token layer".split()


def write_corpus(directory, n_files=2, lines=200, seed=0):
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for f in range(n_files):
        text = "\n".join(" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(lines))
        (directory / f"part{f}.txt").write_text(text + "\n")
    return str(directory / "*.txt")


def test_local_text_jsonl_and_parquet_sources(tmp_path):
    pattern = write_corpus(tmp_path / "txt", n_files=2, lines=5)
    assert len(list(sources.iter_texts(pattern))) == 10  # the text builder yields one row per line
    rows = [{"text": f"document {i}", "id": i} for i in range(4)]
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    assert list(sources.iter_texts(str(tmp_path / "*.jsonl"))) == [r["text"] for r in rows]
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["p1", "p2"]}), tmp_path / "b.parquet")
    assert list(sources.iter_texts(str(tmp_path / "b.parquet"))) == ["p1", "p2"]


def test_bad_sources_have_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="no file matches"):
        list(sources.iter_texts(str(tmp_path / "missing/*.txt")))
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="empty file"):
        list(sources.iter_texts(str(tmp_path / "empty.txt")))
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="unsupported file type"):
        list(sources.iter_texts(str(tmp_path / "x.csv")))
    (tmp_path / "c.jsonl").write_text(json.dumps({"body": "no text column"}))
    with pytest.raises(ValueError, match="no 'text' column"):
        list(sources.iter_texts(str(tmp_path / "c.jsonl")))
    with pytest.raises(ValueError, match="hf:NAME"):
        list(sources.iter_texts("hf:"))


def test_hub_source_streams_the_named_dataset(monkeypatch):
    calls = []

    def fake_load_dataset(name, config, split, streaming):
        calls.append((name, config, split, streaming))
        return iter([{"text": "a"}, {"text": ""}, {"text": "b"}])

    import datasets

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert list(sources.iter_texts("hf:HuggingFaceFW/fineweb:sample-10BT")) == ["a", "b"]
    assert calls == [("HuggingFaceFW/fineweb", "sample-10BT", "train", True)]


def test_sentencepiece_training_and_round_trip(tmp_path):
    pattern = write_corpus(tmp_path / "c")
    model = train_sentencepiece(sources.iter_texts(pattern), str(tmp_path / "tok" / "spm"), vocab_size=320)
    tok = load_tokenizer(model)
    assert tok.vocab_size == 320 and tok.eos_id == 1
    ids = tok.encode("memorization and compression")
    assert tok.decode(ids) == "memorization and compression" and max(ids) < 320


def test_gpt2_bpe_from_local_vocab_and_merges(tmp_path):
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([" ".join(WORDS)] * 50, vocab_size=300, special_tokens=["<|endoftext|>"])
    bpe.save_model(str(tmp_path))
    tok = load_tokenizer(str(tmp_path))
    assert tok.eos_id == 0 and tok.vocab_size == len(json.loads((tmp_path / "vocab.json").read_text()))
    assert tok.decode(tok.encode("the gate entropy")) == "the gate entropy"
    (tmp_path / "merges.txt").unlink()
    with pytest.raises(ValueError, match="lacks merges.txt"):
        load_tokenizer(str(tmp_path))
    with pytest.raises(ValueError, match="not 'char'"):
        load_tokenizer(str(tmp_path / "nothing"))


def test_token_cache_builds_once_reuses_and_detects_truncation(tmp_path):
    pattern = write_corpus(tmp_path / "c", lines=20)
    tok = CharTokenizer(alphabet="".join(sorted(set(" ".join(WORDS)))) + "\n")
    cache = build_cache(pattern, tok, str(tmp_path / "cache"), val_every=5, show_progress=False)
    train, val = cache.split("train"), cache.split("val")
    assert cache.meta["documents"] == 40 and len(val) > 0 and train.dtype == np.uint16
    assert (train == tok.eos_id).sum() == 32 and (val == tok.eos_id).sum() == 8  # one EOS per document
    first_line = (tmp_path / "c" / "part0.txt").read_text().splitlines()[0]
    assert tok.decode(train[: len(first_line)].tolist()) == first_line
    again = build_cache(pattern, tok, str(tmp_path / "cache"), val_every=5, show_progress=False)
    assert again.path == cache.path
    other = build_cache(pattern, tok, str(tmp_path / "cache"), val_every=4, show_progress=False)
    assert other.path != cache.path  # a changed setting never reuses a stale cache
    with open(cache.path / "train.bin", "r+b") as f:
        f.truncate(10)
    with pytest.raises(ValueError, match="truncated"):
        build_cache(pattern, tok, str(tmp_path / "cache"), val_every=5, show_progress=False)
    meta = json.loads((other.path / "meta.json").read_text())
    (other.path / "meta.json").write_text(json.dumps({**meta, "dtype": "object"}))  # would map bytes as pointers
    with pytest.raises(ValueError, match="dtype 'object' is not uint16/uint32"):
        build_cache(pattern, tok, str(tmp_path / "cache"), val_every=4, show_progress=False)


def test_tokenizer_vocab_mismatch_is_reported(tmp_path):
    pattern = write_corpus(tmp_path / "c", lines=2)
    with pytest.raises(ValueError, match="not in the alphabet"):
        build_cache(pattern, CharTokenizer(), str(tmp_path / "cache"), show_progress=False)


def test_packed_batches_are_deterministic_disjoint_and_cover_an_epoch():
    tokens = np.arange(10 * 8, dtype=np.uint16)  # 10 sequences of 8
    ranks = [PackedBatches(tokens, 8, micro_batch=2, rank=r, world=2, seed=3) for r in range(2)]
    assert ranks[0].epoch_length == 8
    seen = [tuple(ranks[r].batch_at(4 * j)[:, 0].tolist()) for j in range(2) for r in range(2)]
    firsts = [s for batch in seen for s in batch]
    assert len(set(firsts)) == 8 and all(f % 8 == 0 for f in firsts)  # 8 distinct whole sequences
    fresh = PackedBatches(tokens, 8, micro_batch=2, rank=1, world=2, seed=3)
    assert torch.equal(fresh.batch_at(20), ranks[1].batch_at(20))  # a pure function of the position
    assert not torch.equal(ranks[0].batch_at(0), ranks[0].batch_at(8))  # next epoch reshuffles
    with pytest.raises(ValueError, match="fewer than one global micro-batch"):
        PackedBatches(tokens[:20], 8, micro_batch=2, rank=0, world=2)
    assert len(list(eval_batches(tokens, 8, 2, 0, 2, max_batches=10))) == 2


def read_steps(batches_per_rank: list, gas: int, first_step: int, steps: int) -> list[list[int]]:
    """The sequence indices each optimizer step reads (all ranks, all micro-batches), as a training loop
    that starts at ``first_step`` and advances the position by W·B per micro-batch reads them."""
    world, micro = len(batches_per_rank), batches_per_rank[0].micro_batch
    consumed, out = first_step * world * micro * gas, []
    for _ in range(steps):
        step = []
        for _ in range(gas):
            step += [i for b in batches_per_rank for i in b.indices(consumed)]
            consumed += world * micro
        out.append(step)
    return out


def test_a_resume_on_another_world_size_reads_the_same_sequences_per_step():
    tokens = np.arange(37 * 8, dtype=np.uint16)  # 37 sequences: an epoch of 32 for the 2 x 4 layout
    layout = (2, 4)

    def split(world, micro, gas, first, steps):
        ranks = [PackedBatches(tokens, 8, micro, r, world, seed=3, layout=layout) for r in range(world)]
        return read_steps(ranks, gas, first, steps)

    reference = split(2, 4, 1, 0, 12)  # 12 steps of G = 8: three epochs of 4 steps
    for epoch in range(3):
        visited = [i for step in reference[4 * epoch : 4 * epoch + 4] for i in step]
        assert len(visited) == len(set(visited)) == 32  # no sequence repeated or skipped within the epoch
    assert reference[0:4] != reference[4:8]  # each epoch reshuffles
    for world, micro, gas in [(1, 8, 1), (1, 4, 2), (4, 1, 2), (4, 2, 1), (2, 2, 2)]:
        for resume_at in (0, 3, 5):  # steps 1..resume_at on 2 ranks x 4, the rest on the other split
            steps = split(2, 4, 1, 0, resume_at) + split(world, micro, gas, resume_at, 12 - resume_at)
            assert [sorted(s) for s in steps] == [sorted(s) for s in reference], (world, micro, gas, resume_at)
    # with the layout's own split the order within a step is the same too, and it is the historical one:
    # global micro-batch j gives rank r the permutation's entries (j·W + r)·B ... (j·W + r + 1)·B - 1
    assert split(2, 4, 1, 0, 12) == reference
    perm = PackedBatches(tokens, 8, 4, 0, 2, seed=3)._permutation(0).tolist()
    assert reference[1] == perm[8:16]
    odd = [PackedBatches(tokens, 8, 3, r, 1, seed=3, layout=layout) for r in range(1)]
    straddle = read_steps(odd, 1, 10, 2)  # positions 30-35: the epoch boundary (32) inside a micro-batch
    assert straddle[0][:2] == perm[30:32] and straddle[0][2:] == [odd[0].sequence_at(32)]


def test_arithmetic_answer_only_targets_and_metrics():
    tok = CharTokenizer()
    inputs, labels = answer_batch(["12x3=36\n", "2x2=4\n"], tok)
    assert tok.decode(inputs[0].tolist()) == "12x3=36\n"
    assert [tok.decode([t]) for t in labels[0].tolist() if t >= 0] == ["3", "6", "\n"]
    assert (labels[1] >= 0).sum() == 2 and (labels[1, 6:] == -100).all()
    # Uniform logits: answer CE = log(V); a one-hot-correct example counts as exact.
    v = tok.vocab_size
    logits = torch.zeros(2, inputs.shape[1], v)
    ce, count, exact = answer_metrics(logits, labels)
    assert count.item() == 5 and ce.item() / 5 == pytest.approx(math.log(v)) and exact.item() == 0
    for t in range(inputs.shape[1] - 1):
        if labels[1, t + 1] >= 0:
            logits[1, t, labels[1, t + 1]] = 50.0
    ce, count, exact = answer_metrics(logits, labels)
    assert exact.item() == 1 and ce.item() == pytest.approx(3 * math.log(v), rel=1e-4)


def test_arithmetic_sets_have_the_documented_digit_ranges():
    train = list(training_texts(seed=1, count=500))
    ood = eval_examples((4, 6), 200, seed=1)
    digits = lambda e: [len(x) for x in e.split("=")[0].split("x")]  # noqa: E731
    assert all(1 <= d <= 3 for e in train for d in digits(e))
    assert all(4 <= d <= 6 for e in ood for d in digits(e))
    assert all(int(e.split("=")[1]) == int(e.split("x")[0]) * int(e.split("x")[1].split("=")[0]) for e in train)


BAD_FILES = [  # (file name, content, fragment of the error besides the file's path)
    ("latin1.txt", "café naïve\n".encode("latin-1"), "is not UTF-8 text"),
    ("binary.txt", bytes(range(128, 256)) * 3, "is not UTF-8 text"),
    ("broken.jsonl", b'{"text": "ok"}\n{"text": "unclosed\n', "cannot read"),
    ("fake.parquet", b"this is not a parquet file\n", "cannot read"),
    ("number.jsonl", b'{"text": "fine"}\n{"text": 123}\n', "row 2 has a int 'text' (123), not a string"),
]


@pytest.mark.parametrize("name,content,fragment", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_unreadable_files_and_bad_rows_name_the_file(tmp_path, name, content, fragment):
    (tmp_path / "good.txt").write_text("a fine first file\n")
    (tmp_path / name).write_bytes(content)
    pattern = f"{tmp_path / 'good.txt'},{tmp_path / name}" if name.endswith(".txt") else str(tmp_path / name)
    with pytest.raises(ValueError) as err:
        list(sources.iter_texts(pattern))
    assert str(tmp_path / name) in str(err.value) and fragment in str(err.value)
    assert "good.txt" not in str(err.value)


def test_rows_without_text_are_counted_in_one_warning(tmp_path):
    rows = ['{"text": "one"}', '{"title": "no text"}', '{"text": null}', '{"text": ""}', '{"text": "two"}']
    (tmp_path / "d.jsonl").write_text("\n".join(rows) + "\n")
    expected = r"skipped 2 row\(s\) without 'text' \(missing or null\) and 1 row\(s\) with empty text"
    with pytest.warns(UserWarning, match=expected):
        assert list(sources.iter_texts(str(tmp_path / "d.jsonl"))) == ["one", "two"]


def test_token_cache_edge_cases_have_clear_outcomes(tmp_path):
    pattern = write_corpus(tmp_path / "c", n_files=1, lines=3)
    tok = CharTokenizer(alphabet="".join(sorted(set(" ".join(WORDS)))) + "\n")
    with pytest.warns(UserWarning, match="3 documents, fewer than --val-every 50: the validation split is empty"):
        cache = build_cache(pattern, tok, str(tmp_path / "cache"), val_every=50, show_progress=False)
    assert len(cache.split("val")) == 0 and len(cache.split("train")) > 0  # no "cannot mmap an empty file"
    with pytest.raises(ValueError, match="all 3 documents went to the validation split"):
        build_cache(pattern, tok, str(tmp_path / "cache"), val_every=1, show_progress=False)

    cache.check_vocab(tok.vocab_size)
    with pytest.raises(ValueError, match=r"holds token id \d+, outside the model's vocabulary of 5"):
        cache.check_vocab(5)
    meta = cache.path / "meta.json"
    for broken in ("{not json", json.dumps({"dtype": "uint16"}), "[]"):
        meta.write_text(broken)
        with pytest.raises(ValueError, match=f"token cache file {meta} is invalid: .*delete"):
            build_cache(pattern, tok, str(tmp_path / "cache"), val_every=50, show_progress=False)


def test_a_file_that_is_no_tokenizer_is_named():
    with pytest.raises(ValueError, match="tokenizer /etc/passwd: not a SentencePiece model"):
        load_tokenizer("/etc/passwd")
