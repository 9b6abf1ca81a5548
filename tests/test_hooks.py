"""Block discovery, layer selection and the capture hooks, without DeepSpeed."""

import functools

import pytest
import torch
from torch import nn

from gapt_ds.hooks import MBECapture, find_blocks, select_layers
from gapt_ds.mbe import patch_mbe
from gapt_ds.models import build_gpt2, enable_activation_checkpointing, gpt2_config


def test_find_gpt2_blocks_and_select_layers():
    model = build_gpt2(gpt2_config("tiny", vocab_size=50, seq_len=16))
    blocks = find_blocks(model)
    assert blocks == list(model.transformer.h) and len(blocks) == 4
    assert select_layers(4, "inner") == [1, 2]
    assert select_layers(4, "all") == [0, 1, 2, 3]
    assert select_layers(4, [-1, 0]) == [0, 3]
    with pytest.raises(ValueError, match=r"\[4\] out of range"):
        select_layers(4, [1, 4])
    with pytest.raises(ValueError, match="same block twice"):
        select_layers(4, [3, -1])
    with pytest.raises(ValueError, match="at least 3 blocks"):
        select_layers(2, "inner")
    with pytest.raises(ValueError, match="mbe_modules"):
        find_blocks(nn.Linear(3, 3))


def test_capture_matches_hidden_states_and_skips_graph_for_unweighted_layers():
    model = build_gpt2(gpt2_config("tiny", vocab_size=50, seq_len=16))
    cap = MBECapture([model.transformer.h[1], model.transformer.h[2]], patch_size=8)
    x = torch.randint(0, 50, (2, 16))
    with cap.capture([1.0, 0.0]) as layers:
        out = model(input_ids=x, output_hidden_states=True)
    for r, hs in zip(layers, (out.hidden_states[2], out.hidden_states[3])):
        assert r.value.item() == pytest.approx(patch_mbe(hs, 8).item(), rel=1e-6)
        assert r.count == 4
    assert layers[0].value.requires_grad and not layers[1].value.requires_grad
    model(input_ids=x)  # outside capture(): hooks do nothing
    assert layers[0] is not None
    cap.remove()
    assert not [h for h in model.transformer.h[1]._forward_hooks.values() if "MBECapture" in h.__qualname__]


class _CheckpointedCall(nn.Module):
    """How older transformers checkpoint a block: its whole ``__call__``, forward hooks included."""

    def __init__(self, block: nn.Module, use_reentrant: bool = False):
        super().__init__()
        self.block, self.use_reentrant = block, use_reentrant

    def forward(self, *args, **kwargs):
        kwargs.pop("use_cache", None)
        return torch.utils.checkpoint.checkpoint(functools.partial(self.block, **kwargs), *args,
                                                 use_reentrant=self.use_reentrant)


def _mbe_step(checkpointing: str, weights=(1.0, 0.5)):
    """CE, per-layer MBE and every parameter's gradient of CE + Σ w·MBE on the tiny GPT-2."""
    model = build_gpt2(gpt2_config("tiny", vocab_size=50, seq_len=16), seed=0)
    blocks = list(model.transformer.h)
    if checkpointing == "hf":
        enable_activation_checkpointing(model)
    elif checkpointing.startswith("around-hooks"):
        model.transformer.h = nn.ModuleList(_CheckpointedCall(b, checkpointing.endswith("reentrant")) for b in blocks)
    cap = MBECapture([blocks[1], blocks[2]], patch_size=8)
    x = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(3))
    fired = []
    blocks[1].ln_1.register_forward_pre_hook(lambda *a: fired.append(1))  # counts the block's runs
    with cap.capture(list(weights)) as layers:
        out = model(input_ids=x, labels=x)
    (out.loss + sum(w * r.value for w, r in zip(weights, layers))).backward()
    grads = {n.replace(".block.", "."): p.grad for n, p in model.named_parameters()}
    return out.loss.item(), [r.value.item() for r in layers], grads, len(fired)


@pytest.mark.parametrize("checkpointing", ["hf", "around-hooks"])
def test_activation_checkpointing_keeps_mbe_and_gradients_exact(checkpointing):
    """The block runs twice (forward, then recomputed in backward); MBE is measured once and its gradient
    is the same, whether the checkpoint wraps the block's forward (transformers 5) or its hooks too (older)."""
    ce, mbe, grads, fired = _mbe_step("none")
    ce_ck, mbe_ck, grads_ck, fired_ck = _mbe_step(checkpointing)
    assert (fired, fired_ck) == (1, 2)  # the block was recomputed in backward
    assert ce_ck == ce and mbe_ck == mbe
    assert grads_ck.keys() == grads.keys()
    for name, g in grads.items():
        torch.testing.assert_close(grads_ck[name], g, rtol=0, atol=1e-7, msg=name)


def test_reentrant_checkpointing_around_hooks_is_refused():
    with pytest.raises(ValueError, match="use_reentrant=False"):
        _mbe_step("around-hooks-reentrant")
