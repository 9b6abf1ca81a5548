"""GPT-2 models from presets or a GPT2Config JSON (random init), or a local HF checkpoint directory."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used: `gapt-ds train --help` reads PRESETS without loading transformers
    from transformers import GPT2Config, GPT2LMHeadModel

# Widths of the GPT-2 family; "tiny" and "cpu" are for tests and CPU runs.
PRESETS: dict[str, dict] = {
    "tiny": dict(n_layer=4, n_embd=32, n_head=2),
    "cpu": dict(n_layer=6, n_embd=128, n_head=4),
    "124m": dict(n_layer=12, n_embd=768, n_head=12),
    "355m": dict(n_layer=24, n_embd=1024, n_head=16),
    "774m": dict(n_layer=36, n_embd=1280, n_head=20),
    "1.5b": dict(n_layer=48, n_embd=1600, n_head=25),
}


def gpt2_config(preset: str = "tiny", vocab_size: int = 50257, seq_len: int = 1024, dropout: float = 0.0,
                config_json: Optional[str] = None, **overrides) -> GPT2Config:
    """A GPT2Config from a preset name (or a GPT2Config JSON file), sized for the tokenizer and context."""
    from transformers import GPT2Config

    if config_json is not None:
        path = Path(config_json)
        if not path.is_file():
            raise ValueError(f"model config file not found: {path}")
        cfg = GPT2Config.from_json_file(str(path))
    else:
        if preset not in PRESETS:
            raise ValueError(f"unknown model preset {preset!r}; available: {', '.join(PRESETS)}")
        cfg = GPT2Config(**PRESETS[preset], vocab_size=vocab_size, n_positions=seq_len,
                         resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
                         bos_token_id=vocab_size - 1, eos_token_id=vocab_size - 1)
    for key, value in overrides.items():
        setattr(cfg, key, value)
    if cfg.n_positions < seq_len:
        raise ValueError(f"model context n_positions={cfg.n_positions} is shorter than seq_len={seq_len}")
    return cfg


def build_gpt2(cfg: GPT2Config, seed: int = 0, init_from: Optional[str] = None) -> GPT2LMHeadModel:
    """Random init (seeded, identical on every rank) or weights from a local ``save_pretrained`` dir."""
    import torch
    from transformers import GPT2LMHeadModel

    if init_from is not None:
        if not (Path(init_from) / "config.json").is_file():
            raise ValueError(f"--init-from {init_from}: not a Hugging Face model directory (no config.json)")
        model = GPT2LMHeadModel.from_pretrained(init_from)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = GPT2LMHeadModel(cfg)
    # GPT-2's class name names no loss, so transformers warned on every run that it fell back to this one
    model.loss_type = "ForCausalLM"
    return model


def enable_activation_checkpointing(model) -> None:
    """Hugging Face activation checkpointing of every transformer block, non-reentrant: each block's
    activations are recomputed in backward instead of kept. The reentrant kind runs blocks without autograd,
    which would cut the MBE term's gradient (gapt-ds refuses it in training)."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ValueError(f"{type(model).__name__} does not support Hugging Face activation checkpointing")
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # newer transformers: there the old name warns
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
