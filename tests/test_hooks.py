"""Block discovery, layer selection and the capture hooks, without DeepSpeed."""

import pytest
import torch
from torch import nn

from gapt_ds.hooks import MBECapture, find_blocks, select_layers
from gapt_ds.mbe import patch_mbe
from gapt_ds.models import build_gpt2, gpt2_config


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
