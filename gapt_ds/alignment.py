"""Gradient alignment cos(∇CE, ∇MBE): the memorization/compression cycle made visible (docs/algorithm.md §1, §5).

Every ``alignment_every`` optimizer steps the engine measures, on that step's first micro-batch and
before training on it, the cosine between the data-parallel-averaged gradients of CE and of the mean
MBE of the selected layers, over all trainable parameters and per transformer block.

How (any ZeRO stage): a recomputed forward straight through the module, then ``torch.autograd.grad`` of
CE and of MBE (under ZeRO-3, which cannot back-propagate twice through one forward, and for a compiled
module, whose backward may refuse ``retain_graph``, a second forward for MBE). ``autograd.grad`` never
accumulates into ``.grad``, so DeepSpeed's gradient hooks, buffers and counters are untouched, and the
RNG state is restored, so training continues bitwise as without the monitor. The averaged gradients are
never assembled: parameters are packed into buckets, each bucket pair is reduce-scattered, and every
rank takes dot products and norms over its own 1/W partition only; one all-reduce of 3 scalars per group
then gives every cosine.
Memory: this rank's local gradients of both losses (twice what a ZeRO-0 backward holds) plus one bucket.
Cost per measurement: one extra forward and two backward passes of one micro-batch (ZeRO-3 or compiled:
two of each).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from gapt_ds import distributed
from gapt_ds.rng import rng_state, set_rng_state

BUCKET_ELEMENTS = 2**24


class AlignmentMonitor:
    """Measures cosines for the groups ``all`` and ``block_<i>`` (the model's transformer blocks)."""

    def __init__(self, model: nn.Module, blocks: list[nn.Module], group=None) -> None:
        self.params = [p for p in model.parameters() if p.requires_grad]
        index = {id(p): i for i, p in enumerate(self.params)}
        self.group_names = ["all"] + [f"block_{b}" for b in range(len(blocks))]
        self.param_group = torch.full((len(self.params),), -1, dtype=torch.long)  # block of each param, -1 none
        for b, block in enumerate(blocks):
            for p in block.parameters():
                if id(p) in index:
                    self.param_group[index[id(p)]] = b + 1
        self.group = group

    def measure(self, losses: Callable[[], tuple[torch.Tensor, torch.Tensor]], one_forward: bool) -> dict[str, float]:
        """``losses()`` runs one forward and returns (CE, mean MBE) with graphs. ``one_forward``: back-propagate
        both from one forward (not possible under ZeRO-3, which then gets a second forward)."""
        state = rng_state()
        try:
            ce, mbe = losses()
            ce_grads = self._grads(ce, retain=one_forward)
            if not one_forward:
                set_rng_state(state)
                mbe = losses()[1]
            mbe_grads = self._grads(mbe)
        finally:
            set_rng_state(state)
        for i, (a, b) in enumerate(zip(ce_grads, mbe_grads)):  # a parameter unused by one loss: zero gradient
            if a is None or b is None:
                like = a if a is not None else b if b is not None else torch.zeros(0)
                ce_grads[i] = torch.zeros_like(like) if a is None else a
                mbe_grads[i] = torch.zeros_like(like) if b is None else b
        sums = self._partitioned_sums(ce_grads, mbe_grads)  # (groups, 3): dot, |g_ce|², |g_mbe|²
        norms = sums[:, 1].sqrt() * sums[:, 2].sqrt()
        # groups where one gradient is exactly zero (blocks after the last measured layer) have no cosine
        dots = sums[:, 0].tolist()
        return {name: float(d / n) for name, d, n in zip(self.group_names, dots, norms.tolist()) if n > 0}

    def _grads(self, loss: torch.Tensor, retain: bool = False) -> list:
        return list(torch.autograd.grad(loss, self.params, allow_unused=True, retain_graph=retain))

    def _partitioned_sums(self, a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
        world = distributed.world_size(self.group)
        device = next((g.device for g in a if g.numel()), torch.device("cpu"))
        per_param = torch.zeros(len(self.params), 3, dtype=torch.float64, device=device)
        start = 0
        while start < len(self.params):
            stop, size = start, 0
            while stop < len(self.params) and (size == 0 or size + a[stop].numel() <= BUCKET_ELEMENTS):
                size += a[stop].numel()
                stop += 1
            self._bucket(a[start:stop], b[start:stop], per_param[start:stop], world, device)
            start = stop
        groups = torch.zeros(len(self.group_names), 3, dtype=torch.float64, device=device)
        groups[0] = per_param.sum(0)
        in_block = self.param_group.to(device) > 0
        groups.index_add_(0, self.param_group.to(device)[in_block], per_param[in_block])
        return distributed.all_reduce_sum(groups, self.group).cpu()

    def _bucket(self, a, b, out: torch.Tensor, world: int, device) -> None:
        """Reduce-scatter one bucket of (∇CE, ∇MBE) and add this rank's partial sums per parameter to ``out``."""
        sizes = [g.numel() for g in a]
        total = sum(sizes)
        padded = -(-total // world) * world
        flat = torch.zeros(2, padded, dtype=torch.float32, device=device)
        if total:
            flat[0, :total] = torch.cat([g.reshape(-1).float() for g in a])
            flat[1, :total] = torch.cat([g.reshape(-1).float() for g in b])
        part = padded // world
        mine = torch.empty(2, part, dtype=torch.float32, device=device)
        rank = distributed.rank(self.group)
        if world > 1:  # each rank receives its slice of the rank-mean of both gradients
            send = flat.view(2, world, part).transpose(0, 1).contiguous()
            distributed.reduce_scatter_sum(mine.view(-1), send.view(-1), self.group)
            mine.div_(world)
        else:
            mine.copy_(flat)
        del flat
        # which parameter owns each element of my slice (the padding belongs to a dummy index)
        ends = torch.tensor(sizes, device=device).cumsum(0)
        owner = torch.searchsorted(ends, torch.arange(rank * part, (rank + 1) * part, device=device), right=True)
        x, y = mine[0].double(), mine[1].double()
        contrib = torch.zeros(len(sizes) + 1, 3, dtype=torch.float64, device=device)
        contrib.index_add_(0, owner, torch.stack([x * y, x * x, y * y], dim=1))
        out += contrib[: len(sizes)]
