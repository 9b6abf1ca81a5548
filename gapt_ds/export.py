"""``gapt-ds export``: a ``gapt-ds train`` checkpoint as a Hugging Face GPT-2 directory.

    gapt-ds export runs/demo/checkpoints runs/demo/hf         # the latest checkpoint; --tag step200 for another
    model = transformers.GPT2LMHeadModel.from_pretrained("runs/demo/hf")

Weights: under ZeRO 1-3 the fp32 master weights, consolidated from every rank's partition by DeepSpeed's
``zero_to_fp32``; under ZeRO-0 the module's own weights (fp32; with bf16 the bf16 weights, upcast). The
GPT2Config is rebuilt from the run's ``args.json`` exactly as ``gapt-ds train`` built it, and checked
against the one stored in the checkpoint. Tokenizer: a GPT-2 BPE directory's ``vocab.json`` and ``merges.txt``
are copied and ``save_pretrained`` adds ``tokenizer.json``; a SentencePiece ``.model`` is copied;
``gapt_tokenizer.json`` describes every kind (``char``: the alphabet, one token per character).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Optional

import torch

from gapt_ds.runtime import HelpFormatter

TOKENIZER_JSON = "gapt_tokenizer.json"


def _checkpoint_dir(path: Path) -> Path:
    """``RUN_DIR/checkpoints``, also when given ``RUN_DIR``."""
    if not path.is_dir():
        raise ValueError(f"{path}: no such directory")
    if not (path / "latest").is_file() and (path / "checkpoints").is_dir():
        return path / "checkpoints"
    return path


def _run_args(run_dir: Path) -> dict:
    path = run_dir / "args.json"
    if not path.is_file():
        raise ValueError(f"{run_dir} has no args.json: not a run directory written by gapt-ds train")
    args = json.loads(path.read_text())
    missing = [k for k in ("model", "model_config", "init_from", "tokenizer", "seq_len", "dropout") if k not in args]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)}: not written by gapt-ds train")
    return args


def _trained_model_config(tag_dir: Path) -> Optional[str]:
    """The GPT2Config diff that ``gapt-ds train`` stored in the checkpoint's run state (None with --init-from)."""
    from gapt_ds.checkpoint import peek_run_state

    model = peek_run_state(tag_dir)["fingerprint"]["model"]
    return model if model.lstrip().startswith("{") else None


def model_config(args: dict):
    """The GPT2Config ``gapt-ds train`` built for these arguments."""
    from transformers import GPT2Config

    from gapt_ds.data.tokenizers import load_tokenizer
    from gapt_ds.models import gpt2_config

    if args["init_from"] is not None:
        return GPT2Config.from_pretrained(args["init_from"], local_files_only=True)
    vocab = load_tokenizer(args["tokenizer"]).vocab_size
    return gpt2_config(args["model"], vocab_size=vocab, seq_len=args["seq_len"], dropout=args["dropout"],
                       config_json=args["model_config"])


def consolidated_state_dict(tag_dir: Path) -> dict[str, torch.Tensor]:
    """Full weights of one checkpoint tag: fp32 masters merged over ranks (ZeRO 1-3), or the module (ZeRO-0).
    Every file is read with the restricted unpickler first: nothing in the tag can run code."""
    from gapt_ds.safe_load import safe_load, verify_tag

    verify_tag(tag_dir)  # before DeepSpeed's zero_to_fp32, which unpickles with weights_only=False
    if list(tag_dir.glob("*_optim_states.pt")):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return get_fp32_state_dict_from_zero_checkpoint(str(tag_dir.parent), tag=tag_dir.name)
    files = sorted(tag_dir.glob("mp_rank_00_model_states.pt"))
    if not files:
        raise ValueError(f"{tag_dir} has neither ZeRO optimizer partitions nor mp_rank_00_model_states.pt")
    return safe_load(files[0])["module"]


def _save_tokenizer(spec: str, out_dir: Path) -> None:
    from gapt_ds.data.tokenizers import CharTokenizer, GPT2BPETokenizer, SentencePieceTokenizer, load_tokenizer

    tok = load_tokenizer(spec)
    info: dict = {"vocab_size": tok.vocab_size, "eos_id": tok.eos_id}
    if isinstance(tok, CharTokenizer):
        info.update(type="char", tokens=list(tok.alphabet))
    elif isinstance(tok, SentencePieceTokenizer):
        shutil.copyfile(tok.path, out_dir / tok.path.name)
        info.update(type="sentencepiece", file=tok.path.name)
    elif isinstance(tok, GPT2BPETokenizer):
        tok.tok.save_pretrained(str(out_dir))  # tokenizer.json + tokenizer_config.json, for AutoTokenizer
        for name in ("vocab.json", "merges.txt"):
            shutil.copyfile(tok.dir / name, out_dir / name)
        info.update(type="gpt2_bpe", files=["vocab.json", "merges.txt"])
    (out_dir / TOKENIZER_JSON).write_text(json.dumps(info, indent=2) + "\n")


def export(checkpoint_dir: str | Path, out_dir: str | Path, tag: Optional[str] = None, force: bool = False) -> Path:
    """Write a ``save_pretrained`` GPT2LMHeadModel plus tokenizer files for a ``gapt-ds train`` checkpoint."""
    from transformers import GPT2LMHeadModel

    from gapt_ds.checkpoint import tag_directory

    ckpt_dir = _checkpoint_dir(Path(checkpoint_dir))
    tag_dir = tag_directory(ckpt_dir, tag)
    args = _run_args(ckpt_dir.parent)
    trained = _trained_model_config(tag_dir)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not force:
        raise ValueError(f"{out} is not empty (use --force to write into it)")
    cfg = model_config(args)
    if trained is not None:
        rebuilt, stored = json.loads(cfg.to_json_string(use_diff=True)), json.loads(trained)
        changed = sorted(k for k in rebuilt.keys() | stored.keys()
                         if k != "transformers_version" and rebuilt.get(k) != stored.get(k))
        if changed:
            raise ValueError(f"the model config rebuilt from {ckpt_dir.parent / 'args.json'} differs from the one "
                             f"{tag_dir} was trained with in {', '.join(changed)} (a changed --model-config file?)")
    state = consolidated_state_dict(tag_dir)
    model = GPT2LMHeadModel(cfg)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if cfg.tie_word_embeddings else set()
    if unexpected or set(missing) - tied:
        raise ValueError(f"{tag_dir} does not match the run's GPT-2: missing {sorted(set(missing) - tied)}, "
                         f"unexpected {sorted(unexpected)}")
    model.tie_weights()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    _save_tokenizer(args["tokenizer"], out)
    return out


def main(argv: Optional[list[str]] = None) -> Path:
    p = argparse.ArgumentParser(prog="gapt-ds export",
                                description="Export a gapt-ds train checkpoint as a Hugging Face GPT-2 directory.",
                                formatter_class=HelpFormatter)
    p.add_argument("checkpoint_dir", help="RUN_DIR/checkpoints of a gapt-ds train run (or RUN_DIR)")
    p.add_argument("out_dir", help="output directory for save_pretrained files and tokenizer files")
    p.add_argument("--tag", default=None, help="checkpoint tag, e.g. step200 (default: the 'latest' one)")
    p.add_argument("--force", action="store_true", help="write into a non-empty OUT_DIR")
    args = p.parse_args(argv)
    return export(args.checkpoint_dir, args.out_dir, tag=args.tag, force=args.force)
