"""Fixed-length packed sequences and a deterministic per-rank batch order whose position is one integer.

Sequence i is tokens[i·S : (i+1)·S] (labels = inputs; the model shifts them). Epoch e visits the
sequences in a permutation seeded by (seed, e); global micro-batch j (counted over all ranks together)
gives rank r the sequences perm[(j·W + r)·B : (j·W + r + 1)·B]. So ``micro_batch(j)`` depends only on j:
the checkpoint stores j and a resumed run reads exactly what the uninterrupted run would have read.
"""

from __future__ import annotations

import numpy as np
import torch


class PackedBatches:
    def __init__(self, tokens: np.ndarray, seq_len: int, micro_batch: int, rank: int, world: int, seed: int = 0):
        self.tokens, self.seq_len, self.micro_batch = tokens, seq_len, micro_batch
        self.rank, self.world, self.seed = rank, world, seed
        self.num_sequences = len(tokens) // seq_len
        self.per_epoch = self.num_sequences // (micro_batch * world)  # global micro-batches per epoch
        if self.per_epoch == 0:
            raise ValueError(f"{len(tokens)} tokens make {self.num_sequences} sequences of {seq_len}: fewer than one "
                             f"global micro-batch ({world} ranks x {micro_batch}); use more data or a shorter "
                             "--seq-len")
        self._perm_epoch, self._perm = -1, None

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm, self._perm_epoch = torch.randperm(self.num_sequences, generator=g), epoch
        return self._perm

    def micro_batch_at(self, j: int) -> torch.Tensor:
        """This rank's (B, S) int64 token batch of global micro-batch ``j``."""
        epoch, k = divmod(j, self.per_epoch)
        start = (k * self.world + self.rank) * self.micro_batch
        idx = self._permutation(epoch)[start : start + self.micro_batch].tolist()
        rows = [np.asarray(self.tokens[i * self.seq_len : (i + 1) * self.seq_len], dtype=np.int64) for i in idx]
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
