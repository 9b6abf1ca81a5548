"""The multiplication task of docs/algorithm.md §6.2: ``a x b = c`` with one token per symbol, no download.

Examples are written ``123x45=5535\\n`` (13-symbol alphabet, ``\\n`` ends an example). Training
uses operands of 1-3 digits, in-distribution (ID) evaluation 1-3 and out-of-distribution (OOD) 4-6.
The metric is cross-entropy on the answer tokens only: the digits after ``=`` and the closing ``\\n``.
"""

from __future__ import annotations

import random
from typing import Iterator

import torch

ID_DIGITS, OOD_DIGITS = (1, 3), (4, 6)
EVAL_SETS = {"id": ID_DIGITS, "ood": OOD_DIGITS}  # evaluation set name -> operand digit range
IGNORE = -100


def sample_problem(rng: random.Random, digits: tuple[int, int]) -> tuple[int, int]:
    """Operands whose digit counts are uniform in ``digits`` (then uniform values of that length)."""

    def operand() -> int:
        n = rng.randint(*digits)
        return rng.randint(10 ** (n - 1) if n > 1 else 0, 10**n - 1)

    return operand(), operand()


def format_example(a: int, b: int) -> str:
    return f"{a}x{b}={a * b}\n"


def training_texts(seed: int, count: int = 200_000) -> Iterator[str]:
    """``count`` training examples with 1-3 digit operands (a deterministic stream for the token cache)."""
    rng = random.Random(seed)
    for _ in range(count):
        yield format_example(*sample_problem(rng, ID_DIGITS))


def eval_examples(digits: tuple[int, int], count: int, seed: int) -> list[str]:
    rng = random.Random(10_000 + seed * 7 + digits[0])
    return [format_example(*sample_problem(rng, digits)) for _ in range(count)]


def answer_batch(examples: list[str], tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``input_ids`` and ``labels`` that score only the answer (after ``=``, incl. ``\\n``)."""
    ids = [tokenizer.encode(e) for e in examples]
    eq = tokenizer.encode("=")[0]
    width = max(map(len, ids))
    inputs = torch.full((len(ids), width), tokenizer.eos_id, dtype=torch.long)
    labels = torch.full((len(ids), width), IGNORE, dtype=torch.long)
    for row, seq in enumerate(ids):
        inputs[row, : len(seq)] = torch.tensor(seq)
        start = seq.index(eq) + 1
        labels[row, start : len(seq)] = torch.tensor(seq[start:])
    return inputs, labels


def answer_metrics(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sums over a batch: (answer-token CE sum, answer-token count, exactly-right examples).

    Position t predicts token t+1. An example is exactly right when every answer token is the argmax,
    which is what greedy decoding after ``=`` would produce.
    """
    logits, targets = logits[:, :-1].float(), labels[:, 1:]
    mask = targets != IGNORE
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets.clamp_min(0), reduction="none")
    correct = (logits.argmax(-1) == targets) | ~mask
    return (ce * mask).sum(), mask.sum(), correct.all(dim=1).sum()
