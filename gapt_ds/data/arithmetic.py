"""The multiplication task of docs/algorithm.md §6.2: ``a x b = c`` with one token per symbol, no download.

Examples are written ``123x45=5535\\n`` (13-symbol alphabet, ``\\n`` ends an example). Training
uses operands of 1-3 digits, in-distribution (ID) evaluation 1-3 and out-of-distribution (OOD) 4-6.
The metric is cross-entropy on the answer tokens only: the digits after ``=`` and the closing ``\\n``.

Task options (``gapt-ds train`` flags, all off by default = the paper's packed stream):

- ``--arith-digits 1-2:3-4``: ID:OOD operand digit ranges (default ``1-3:4-6``, the paper's; ``1-2:3-4``
  is a CPU-scale variant);
- ``--arith-reverse``: the answer is written least-significant digit first (``12x34=804\\n`` becomes
  ``12x34=408\\n``), so each digit depends only on digits already produced;
- ``--arith-per-problem``: one problem per training sequence, right-padded to ``--seq-len`` with the
  end-of-text token; padding positions get ``labels = -100`` (no packing across problems). The MBE windows
  still cover the whole sequence, padding included (the engine measures MBE on every position);
- ``--arith-pad``: fixed-width examples: operands zero-padded to the range's largest digit count D and the
  answer to 2D digits (``7x93=651`` becomes ``07x93=0651``; with ``--arith-reverse``, ``07x93=1560``), so
  every digit of an ID example sits at the same position; OOD examples are padded to their own D;
- ``--arith-answer-loss`` (needs ``--arith-per-problem``): ``labels = -100`` outside the answer, so the
  training CE (and the CE the gate watches) is the answer CE. Hugging Face GPT-2's loss ignores -100.
"""

from __future__ import annotations

import argparse
import random
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Iterator, Optional

if TYPE_CHECKING:  # torch is imported where it is used: `gapt-ds train --help` reads this module's options
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


def format_example(a: int, b: int, reverse: bool = False, width: int = 0) -> str:
    """``axb=c\n``; ``width`` > 0 zero-pads the operands to ``width`` digits and the answer to ``2 * width``."""
    answer = str(a * b).zfill(2 * width)
    return f"{str(a).zfill(width)}x{str(b).zfill(width)}={answer[::-1] if reverse else answer}\n"


@dataclass(frozen=True)
class Task:
    """The task's options (see the module docstring); the defaults are the paper's packed stream."""

    id_digits: tuple[int, int] = ID_DIGITS
    ood_digits: tuple[int, int] = OOD_DIGITS
    reverse: bool = False
    per_problem: bool = False
    answer_loss: bool = False
    pad: bool = False

    def width(self, digits: tuple[int, int]) -> int:
        """Operand width of examples with operands of ``digits`` (0: unpadded)."""
        return digits[1] if self.pad else 0

    @property
    def eval_sets(self) -> dict[str, tuple[int, int]]:
        return {"id": self.id_digits, "ood": self.ood_digits}

    def max_len(self, digits: tuple[int, int]) -> int:
        """Tokens of the longest example: two operands, ``x``, ``=``, the product and ``\\n``."""
        return 4 * digits[1] + 3

    def data_spec(self) -> str:
        """The ``--data`` source name of the training text (the token cache is keyed by it)."""
        if (self.id_digits, self.reverse, self.pad) == (ID_DIGITS, False, False):
            return "arithmetic"
        opts = "".join(f",{name}" for name, on in (("reverse", self.reverse), ("pad", self.pad)) if on)
        return f"arithmetic:id={self.id_digits[0]}-{self.id_digits[1]}{opts}"

    @classmethod
    def from_spec(cls, spec: str) -> "Task":
        """Inverse of ``data_spec`` (training digits and answer order)."""
        _, _, opts = spec.partition(":")
        task = cls()
        for opt in filter(None, opts.split(",")):
            if opt in ("reverse", "pad"):
                task = replace(task, **{opt: True})
            elif opt.startswith("id="):
                task = replace(task, id_digits=parse_range(opt[3:]))
            else:
                raise ValueError(f"--data {spec!r}: unknown arithmetic option {opt!r} (id=A-B, reverse, pad)")
        return task


def parse_range(text: str) -> tuple[int, int]:
    lo, sep, hi = text.partition("-")
    try:
        r = (int(lo), int(hi)) if sep else (int(lo), int(lo))
    except ValueError:
        raise ValueError(f"digit range {text!r}: expected A-B, e.g. 1-3") from None
    if not 1 <= r[0] <= r[1]:
        raise ValueError(f"digit range {text!r}: need 1 <= A <= B")
    return r


def training_texts(seed: int, count: int = 200_000, task: Task = Task()) -> Iterator[str]:
    """``count`` training examples with ID operands (a deterministic stream for the token cache)."""
    rng = random.Random(seed)
    for _ in range(count):
        yield format_example(*sample_problem(rng, task.id_digits), task.reverse, task.width(task.id_digits))


def eval_examples(digits: tuple[int, int], count: int, seed: int, reverse: bool = False,
                  pad: bool = False) -> list[str]:
    rng = random.Random(10_000 + seed * 7 + digits[0])
    return [format_example(*sample_problem(rng, digits), reverse, digits[1] if pad else 0) for _ in range(count)]


class ProblemBatches:
    """One problem per sequence, padded to ``seq_len``: ``batch_at(consumed)`` -> (input_ids, labels).

    A fresh problem for every position of the global stream (see ``gapt_ds.data.batches``), so resuming
    reads what the uninterrupted run would have read, also on another world size, and every arm with the
    same seed sees the same problems in the same order. The stream is cut into chunks of the layout's
    micro-batch B0 (the run's first world size W0 and micro-batch; kept by every resume): position p is
    problem p mod B0 of the chunk drawn from an RNG seeded by (seed, p div (W0·B0), (p div B0) mod W0), which
    is the (global micro-batch, rank) seeding gapt-ds has always used for the layout's own split.
    """

    def __init__(self, task: Task, tokenizer, seq_len: int, micro_batch: int, rank: int, world: int, seed: int = 0,
                 layout: Optional[tuple[int, int]] = None):
        if task.max_len(task.id_digits) > seq_len:
            raise ValueError(f"--seq-len {seq_len} is shorter than the longest training problem "
                             f"({task.max_len(task.id_digits)} tokens)")
        self.task, self.tok, self.seq_len, self.micro_batch = task, tokenizer, seq_len, micro_batch
        self.rank, self.world, self.seed = rank, world, seed
        self.layout = tuple(layout or (world, micro_batch))
        self.eq = tokenizer.encode("=")[0]
        self._chunk_key, self._chunk = None, []

    def problem_at(self, position: int) -> tuple[int, int]:
        """The operands of the global stream's problem at ``position``."""
        world0, micro0 = self.layout
        key = (position // (world0 * micro0), position // micro0 % world0)
        if key != self._chunk_key:
            rng = random.Random(f"{self.seed}:{key[0]}:{key[1]}")
            self._chunk_key, self._chunk = key, [sample_problem(rng, self.task.id_digits) for _ in range(micro0)]
        return self._chunk[position % micro0]

    def batch_at(self, consumed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's (input_ids, labels) at global position ``consumed`` (sequences read so far)."""
        import torch

        inputs = torch.full((self.micro_batch, self.seq_len), self.tok.eos_id, dtype=torch.long)
        labels = torch.full((self.micro_batch, self.seq_len), IGNORE, dtype=torch.long)
        start = consumed + self.rank * self.micro_batch
        for row in range(self.micro_batch):
            seq = self.tok.encode(format_example(*self.problem_at(start + row), self.task.reverse,
                                                 self.task.width(self.task.id_digits)))
            inputs[row, : len(seq)] = torch.tensor(seq)
            first = seq.index(self.eq) + 1 if self.task.answer_loss else 0
            labels[row, first : len(seq)] = inputs[row, first : len(seq)]
        return inputs, labels


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The task's ``gapt-ds train`` flags (module docstring)."""
    a = parser.add_argument_group("arithmetic task (--data arithmetic)")
    a.add_argument("--arith-digits", default="1-3:4-6", help="arithmetic ID:OOD operand digit ranges (the paper's; "
                   "`1-2:3-4` is the CPU-scale variant)")
    a.add_argument("--arith-reverse", action="store_true",
                   help="arithmetic answers written least-significant digit first")
    a.add_argument("--arith-pad", action="store_true",
                   help="fixed-width arithmetic examples: operands zero-padded to the digit range's maximum D, the "
                   "answer to 2D digits (ID and OOD each to their own D)")
    a.add_argument("--arith-per-problem", action="store_true",
                   help="one arithmetic problem per training sequence, right-padded to `--seq-len` with the "
                   "end-of-text token (no packing); padding gets `labels = -100`, the MBE windows still cover it")
    a.add_argument("--arith-answer-loss", action="store_true",
                   help="training labels `-100` outside the answer (needs `--arith-per-problem`): the training CE, "
                   "and the CE the gate watches, is the answer CE")


def task_from_args(args: argparse.Namespace) -> Optional[Task]:
    """The arithmetic ``Task`` of parsed train arguments (None when --data is not arithmetic)."""
    if args.data != "arithmetic":
        return None
    id_text, sep, ood_text = args.arith_digits.partition(":")
    if not sep:
        raise ValueError(f"--arith-digits {args.arith_digits!r}: expected ID:OOD ranges, e.g. 1-2:3-4")
    return Task(parse_range(id_text), parse_range(ood_text), args.arith_reverse, args.arith_per_problem,
                args.arith_answer_loss, args.arith_pad)


def check_args(args: argparse.Namespace) -> list[str]:
    """Problems with the task flags (empty when fine)."""
    flags = (args.arith_reverse or args.arith_per_problem or args.arith_answer_loss or args.arith_pad
             or args.arith_digits != "1-3:4-6")
    if args.data != "arithmetic":
        return [f"--arith-* options need --data arithmetic, got --data {args.data!r}"] if flags else []
    problems = []
    try:
        task = task_from_args(args)
    except ValueError as err:
        return [str(err)]
    if task.answer_loss and not task.per_problem:
        problems.append("--arith-answer-loss needs --arith-per-problem (packed sequences have no single answer)")
    longest = max(task.max_len(task.id_digits), task.max_len(task.ood_digits) if args.arith_eval else 0)
    if flags and args.seq_len < longest:  # (the packed default keeps its former checks and messages)
        problems.append(f"--seq-len {args.seq_len} is shorter than the longest arithmetic problem "
                        f"({longest} tokens for digits {args.arith_digits}); the model's context is --seq-len")
    return problems


def answer_batch(examples: list[str], tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``input_ids`` and ``labels`` that score only the answer (after ``=``, incl. ``\\n``)."""
    import torch

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
    import torch

    logits, targets = logits[:, :-1].float(), labels[:, 1:]
    mask = targets != IGNORE
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets.clamp_min(0), reduction="none")
    correct = (logits.argmax(-1) == targets) | ~mask
    return (ce * mask).sum(), mask.sum(), correct.all(dim=1).sum()
