"""Fixed-length packed sequences in a deterministic order whose position is one integer: the number of
sequences consumed so far by all ranks together.

Sequence i is tokens[i·S : (i+1)·S] (labels = inputs; the model shifts them). The run reads one global
stream: position p is sequence perm_e[p mod L] of epoch e = p div L, where perm_e is a permutation seeded by
(seed, e) and L, the epoch length, is the number of sequences floored to a multiple of the *layout's*
global micro-batch. The layout (world size W0, micro-batch B0) is the one the run started with and is kept
by every resume, so L never changes within a run. A micro-batch at position p gives rank r the positions
p + r·B ... p + (r+1)·B - 1 (B: this run's micro-batch), and the run then advances p by W·B.

So an optimizer step reads the positions [s·G, (s+1)·G) for the global batch G = W·B·GAS, whatever the
split into ranks, micro-batches and accumulation steps: a resume on another world size with the same G
reads exactly the sequences the uninterrupted run would have read, none repeated or skipped. With the
layout's own split this is the order gapt-ds has always used (global micro-batch j = position j·W·B).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch


class PackedBatches:
    def __init__(self, tokens: np.ndarray, seq_len: int, micro_batch: int, rank: int, world: int, seed: int = 0,
                 layout: Optional[tuple[int, int]] = None):
        self.tokens, self.seq_len, self.micro_batch = tokens, seq_len, micro_batch
        self.rank, self.world, self.seed = rank, world, seed
        self.layout = tuple(layout or (world, micro_batch))  # (W0, B0): the run's first world and micro-batch
        self.num_sequences = len(tokens) // seq_len
        unit = self.layout[0] * self.layout[1]
        self.epoch_length = self.num_sequences // unit * unit  # sequences per epoch
        if self.epoch_length == 0:
            raise ValueError(f"{len(tokens)} tokens make {self.num_sequences} sequences of {seq_len}: fewer than one "
                             f"global micro-batch ({self.layout[0]} ranks x {self.layout[1]}); use more data or a "
                             "shorter --seq-len")
        self._perm_epoch, self._perm = -1, None

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm, self._perm_epoch = torch.randperm(self.num_sequences, generator=g), epoch
        return self._perm

    def sequence_at(self, position: int) -> int:
        """The sequence index the global stream visits at ``position``."""
        epoch, k = divmod(position, self.epoch_length)
        return int(self._permutation(epoch)[k])

    def indices(self, consumed: int) -> list[int]:
        """The sequence indices of this rank's micro-batch when ``consumed`` sequences were read before it."""
        start = consumed + self.rank * self.micro_batch
        return [self.sequence_at(p) for p in range(start, start + self.micro_batch)]

    def batch_at(self, consumed: int) -> torch.Tensor:
        """This rank's (B, S) int64 token batch at global position ``consumed`` (sequences read so far)."""
        rows = [np.asarray(self.tokens[i * self.seq_len : (i + 1) * self.seq_len], dtype=np.int64)
                for i in self.indices(consumed)]
        return torch.from_numpy(np.stack(rows))


def eval_batches(tokens: np.ndarray, seq_len: int, micro_batch: int, rank: int, world: int, max_batches: int):
    """The first validation sequences in order, sharded over ranks (same count on every rank)."""
    n = len(tokens) // seq_len
    per_rank = min(n // world // micro_batch, max_batches)
    for b in range(per_rank):
        base = (b * world + rank) * micro_batch
        rows = [np.asarray(tokens[i * seq_len : (i + 1) * seq_len], dtype=np.int64)
                for i in range(base, base + micro_batch)]
        yield torch.from_numpy(np.stack(rows))
