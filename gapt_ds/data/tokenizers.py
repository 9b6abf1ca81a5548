"""Tokenizers behind one small interface: characters (arithmetic), SentencePiece, GPT-2 BPE from local files.

    load_tokenizer("char")                     # the arithmetic alphabet, one token per symbol
    load_tokenizer("runs/tok/spm.model")       # a SentencePiece model (train one: `gapt-ds tokenizer`)
    load_tokenizer("path/to/gpt2_dir")         # GPT-2 BPE from vocab.json + merges.txt (no hub access)
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable, Protocol, Sequence

ARITHMETIC_ALPHABET = "0123456789x=\n"


class Tokenizer(Protocol):
    vocab_size: int
    eos_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def fingerprint(self) -> str:
        """Identifies the vocabulary, so a token cache is never reused with another tokenizer."""
        ...


class CharTokenizer:
    """One token per character of a fixed alphabet; ``"\\n"`` (end of example) is the EOS token."""

    def __init__(self, alphabet: str = ARITHMETIC_ALPHABET) -> None:
        self.alphabet = alphabet
        self.index = {c: i for i, c in enumerate(alphabet)}
        self.vocab_size = len(alphabet)
        self.eos_id = self.index["\n"]

    def encode(self, text: str) -> list[int]:
        try:
            return [self.index[c] for c in text]
        except KeyError as err:
            raise ValueError(f"character {err.args[0]!r} is not in the alphabet {self.alphabet!r}") from None

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.alphabet[i] for i in ids)

    def fingerprint(self) -> str:
        return "char:" + hashlib.sha1(self.alphabet.encode()).hexdigest()[:12]


class SentencePieceTokenizer:
    def __init__(self, model_file: str) -> None:
        import sentencepiece as spm

        self.path = Path(model_file)
        if not self.path.is_file():
            raise ValueError(f"SentencePiece model not found: {self.path}")
        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(self.path))
        except (RuntimeError, OSError) as err:
            raise ValueError(f"tokenizer {self.path}: not a SentencePiece model (expected a .model file from "
                             f"`gapt-ds tokenizer`, or a GPT-2 BPE directory): {str(err).splitlines()[0][:200]}"
                             ) from None
        self.vocab_size = self.sp.get_piece_size()
        eos = self.sp.eos_id()
        if eos < 0:
            raise ValueError(f"{self.path} has no EOS piece; train it with eos_id >= 0 (gapt-ds tokenizer does)")
        self.eos_id = eos

    def __reduce__(self):  # pickled (to tokenizer worker processes) as its file, reloaded there
        return type(self), (str(self.path),)

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.sp.decode(list(ids))

    def fingerprint(self) -> str:
        return "spm:" + hashlib.sha1(self.path.read_bytes()).hexdigest()[:12]


class GPT2BPETokenizer:
    """GPT-2 byte-level BPE from local ``vocab.json`` and ``merges.txt`` (``<|endoftext|>`` is EOS)."""

    def __init__(self, directory: str) -> None:
        from transformers import GPT2TokenizerFast

        d = Path(directory)
        missing = [f for f in ("vocab.json", "merges.txt") if not (d / f).is_file()]
        if missing:
            raise ValueError(f"GPT-2 BPE directory {d} lacks {', '.join(missing)}")
        self.dir = d
        self.tok = GPT2TokenizerFast.from_pretrained(str(d), local_files_only=True)
        self.backend = self.tok.backend_tokenizer
        self.vocab_size = len(self.tok)
        vocab = self.tok.get_vocab()
        if "<|endoftext|>" not in vocab:
            raise ValueError(f"{d / 'vocab.json'} has no <|endoftext|> token")
        self.eos_id = vocab["<|endoftext|>"]

    def __getstate__(self) -> dict:
        # To tokenizer worker processes: the Rust tokenizer itself, so they never import transformers (seconds).
        return {**self.__dict__, "tok": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text).ids  # what GPT2TokenizerFast.encode returns, without its Python layers

    def decode(self, ids: Sequence[int]) -> str:
        if self.tok is None:
            from transformers import GPT2TokenizerFast

            self.tok = GPT2TokenizerFast.from_pretrained(str(self.dir), local_files_only=True)
        return self.tok.decode(list(ids))

    def fingerprint(self) -> str:
        h = hashlib.sha1((self.dir / "vocab.json").read_bytes() + (self.dir / "merges.txt").read_bytes())
        return "gpt2bpe:" + h.hexdigest()[:12]


def load_tokenizer(spec: str) -> Tokenizer:
    """``char`` | a ``.model`` SentencePiece file | a directory with GPT-2 ``vocab.json``/``merges.txt``."""
    if spec == "char":
        return CharTokenizer()
    path = Path(spec)
    if path.is_dir():
        return GPT2BPETokenizer(spec)
    if path.suffix == ".model" or path.is_file():
        return SentencePieceTokenizer(spec)
    raise ValueError(f"tokenizer {spec!r}: not 'char', a SentencePiece .model file, or a GPT-2 BPE directory")


def train_sentencepiece(texts: Iterable[str], out_prefix: str, vocab_size: int, model_type: str = "bpe",
                        max_sentences: int = 2_000_000) -> str:
    """Train a SentencePiece model on ``texts``; writes ``out_prefix.model``/``.vocab``, returns the model path."""
    import sentencepiece as spm

    if vocab_size < 8:
        raise ValueError(f"vocab_size must be >= 8, got {vocab_size}")
    Path(out_prefix).parent.mkdir(parents=True, exist_ok=True)
    lines = (line for text in texts for line in text.splitlines() if line.strip())
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=lines, model_prefix=out_prefix, vocab_size=vocab_size, model_type=model_type,
            character_coverage=1.0, byte_fallback=True, pad_id=-1, unk_id=0, bos_id=-1, eos_id=1,
            input_sentence_size=max_sentences, shuffle_input_sentence=True, minloglevel=2,
        )
    except RuntimeError as err:
        raise ValueError(f"SentencePiece training failed: {err}") from None
    return out_prefix + ".model"
