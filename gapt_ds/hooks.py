"""Find a model's transformer blocks and measure MBE of their outputs with forward hooks.

The model is never edited: ``MBECapture`` registers a forward hook per selected block that keeps a
reference to the block's output (B, S, D) (autograd holds it anyway, as the next block's input), and
turns each into that layer's MBE when the model's forward returns. Measuring after the forward, not in
the hook, keeps the MBE graph out of any activation checkpoint that wraps the block together with its
hooks, and out of a compiled region. Hooks are active only inside ``capture()``, so a block recomputed
in backward (activation checkpointing) is not measured twice.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterator, Optional, Sequence, Union

import torch
from torch import nn

from gapt_ds import distributed, mbe

# Where common Hugging Face causal LMs keep their list of blocks (GPT-2 first).
BLOCK_PATHS = ("transformer.h", "model.layers", "gpt_neox.layers", "transformer.blocks", "model.decoder.layers")


def find_blocks(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks of a HF causal LM (``transformer.h`` for GPT-2), in order."""
    for path in BLOCK_PATHS:
        obj = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
        if isinstance(obj, (nn.ModuleList, nn.Sequential)) and len(obj) > 0:
            return list(obj)
    raise ValueError(
        f"cannot find the transformer blocks of {type(model).__name__} (looked for {', '.join(BLOCK_PATHS)}); "
        "pass mbe_modules=[...] to gapt_ds.initialize"
    )


def select_layers(num_blocks: int, layers: Union[str, Sequence[int]]) -> list[int]:
    """Block indices for the config's ``layers``: inner (all but first and last) | all | explicit list."""
    if layers == "all":
        return list(range(num_blocks))
    if layers == "inner":
        if num_blocks < 3:
            raise ValueError(f"layers='inner' needs at least 3 blocks, the model has {num_blocks}; use 'all' or a list")
        return list(range(1, num_blocks - 1))
    bad = [i for i in layers if not -num_blocks <= i < num_blocks]
    if bad:
        raise ValueError(f"layer indices {bad} out of range for a model with {num_blocks} blocks")
    resolved = sorted(i % num_blocks for i in layers)
    if len(set(resolved)) != len(resolved):
        raise ValueError(f"layer list {list(layers)} names the same block twice")
    return resolved


@dataclass
class LayerMBE:
    """One layer's MBE for one micro-batch: ``value`` (for the loss; has a graph if weighted),
    and ``local_sum`` / ``count`` (this rank's share of the step mean, detached)."""

    value: torch.Tensor
    local_sum: torch.Tensor
    count: int


@dataclass
class MBECapture:
    """Forward hooks on ``modules`` that compute MBE per the ``"gapt"`` settings."""

    modules: list[nn.Module]
    patch_size: int = 8
    tail: str = "error"
    mode: str = "patch"
    group: Optional[object] = None
    _weights: list[float] = field(default_factory=list)
    _outputs: list[Optional[torch.Tensor]] = field(default_factory=list)
    _active: bool = False
    _grad: bool = False  # autograd was on when capture() began

    def __post_init__(self) -> None:
        self._handles = [m.register_forward_hook(self._hook(i)) for i, m in enumerate(self.modules)]

    def remove(self) -> None:
        for h in self._handles:
            h.remove()

    @contextlib.contextmanager
    def capture(self, weights: Sequence[float], strict: bool = True) -> Iterator[list[Optional[LayerMBE]]]:
        """Measure every selected layer of the forward run inside the block; layers with weight 0 get no graph.
        The yielded list is filled when the block ends.

        ``strict=False`` (evaluation) drops a sequence tail that does not fill a window and leaves a
        layer's result ``None`` where no window fits, instead of raising.
        """
        assert len(weights) == len(self.modules), (len(weights), len(self.modules))
        self._weights = list(weights)
        self._outputs = [None] * len(self.modules)
        results: list[Optional[LayerMBE]] = [None] * len(self.modules)
        self._active, self._grad = True, torch.is_grad_enabled()
        try:
            yield results
            self._active = False
            for i, hidden in enumerate(self._outputs):
                if hidden is not None:
                    results[i] = self._layer(hidden, self._weights[i], strict)
        finally:
            # The outputs carry the forward's autograd graph, whose C++ nodes (e.g. ZeRO-3's module
            # hooks) reference the model: kept here, they would pin model and engine beyond their use.
            self._active, self._outputs = False, []

    def _hook(self, index: int):
        def hook(module: nn.Module, args, output) -> None:
            if not self._active:
                return
            hidden = output[0] if isinstance(output, (tuple, list)) else output
            if self._grad and not torch.is_grad_enabled() and self._weights[index] != 0:
                raise ValueError(
                    "a measured block ran without autograd inside a training forward, so its MBE term would not "
                    "train: reentrant activation checkpointing does that; use use_reentrant=False "
                    "(gapt_ds.models.enable_activation_checkpointing)")
            self._outputs[index] = hidden

        return hook

    def _layer(self, hidden: torch.Tensor, weight: float, strict: bool) -> Optional[LayerMBE]:
        with torch.set_grad_enabled(torch.is_grad_enabled() and weight != 0):
            if strict:
                return self._measure(hidden, self.tail)
            if hidden.shape[-2] >= self.patch_size or self.mode == "global":
                return self._measure(hidden, "drop")
        return None

    def _measure(self, hidden: torch.Tensor, tail: str) -> LayerMBE:
        if hidden.dim() == 2:  # (B, D) features, e.g. an MLP's hidden layer: one "sequence" per batch
            hidden = hidden.unsqueeze(0)
        if self.mode == "patch":
            per_window = mbe.patch_mbe_per_window(hidden, self.patch_size, tail)
            value = per_window.mean()
            return LayerMBE(value, value.detach() * per_window.numel(), per_window.numel())
        g = distributed.global_gram(hidden, self.group)
        value = mbe.mbe_from_gram(g)
        if torch.is_grad_enabled():
            # Exact gradient of the global MBE w.r.t. this shard, scaled by the data-parallel size
            # because DeepSpeed averages gradients over ranks (docs/algorithm.md §3).
            sur = mbe.global_mbe_surrogate(hidden, g) * distributed.world_size(self.group)
            value = value + (sur - sur.detach())
        return LayerMBE(value, value.detach(), 1)
