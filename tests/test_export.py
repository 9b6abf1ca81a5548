"""`gapt-ds export`: a 2-rank ZeRO-3 `gapt-ds train` checkpoint becomes a `from_pretrained` GPT-2 whose logits
match the trained DeepSpeed engine's; clear errors for directories that are not gapt-ds checkpoints."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dist import free_port, run_ranks
from gapt_ds.export import export

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SEQ = 32


def env() -> dict:
    return dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
                PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")


def probe() -> torch.Tensor:
    return torch.randint(0, 13, (2, SEQ), generator=torch.Generator().manual_seed(7))  # 13: the char alphabet


def engine_logits_worker(rank: int, run_dir: str) -> torch.Tensor:
    """The trained model as DeepSpeed sees it: the run's own ZeRO-3 config, its checkpoint, engine forward."""
    import gapt_ds
    from gapt_ds.models import build_gpt2, gpt2_config
    from gapt_ds.optim import build_optimizer

    cfg = json.loads((Path(run_dir) / "ds_config.json").read_text())
    cfg["tensorboard"] = {"enabled": False}
    model = build_gpt2(gpt2_config("tiny", vocab_size=13, seq_len=SEQ), seed=123)  # weights come from the checkpoint
    optimizer, params, cfg = build_optimizer(model, cfg)  # as gapt-ds train: its two parameter groups
    engine, *_ = gapt_ds.initialize(model=model, optimizer=optimizer, model_parameters=params, config=cfg)
    path, _ = engine.load_checkpoint(str(Path(run_dir) / "checkpoints"))
    assert path is not None and engine.zero_optimization_stage() == 3
    engine.eval()
    with torch.no_grad():
        return engine(input_ids=probe(), labels=probe()).logits.float()


@pytest.mark.distributed
def test_zero3_two_rank_run_exports_to_a_matching_hugging_face_gpt2(tmp_path):
    from transformers import GPT2LMHeadModel

    ds = json.loads((ROOT / "ds_configs" / "cpu_default.json").read_text())
    ds.update(train_micro_batch_size_per_gpu=4, zero_optimization={"stage": 3})
    (tmp_path / "ds.json").write_text(json.dumps(ds))
    run_dir = tmp_path / "run"
    train = [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port()), "-m", "gapt_ds.train",
             "--deepspeed_config", str(tmp_path / "ds.json"), "--data", "arithmetic", "--model", "tiny",
             "--seq-len", str(SEQ), "--steps", "6", "--eval-every", "0", "--save-every", "0", "--arith-eval", "0",
             "--eval-batches", "1", "--run-dir", str(run_dir), "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    proc = subprocess.run(train, env=env(), capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-8000:]
    assert list((run_dir / "checkpoints" / "step6").glob("zero_pp_rank_1_*optim_states.pt"))  # really ZeRO-3, 2 ranks

    out = tmp_path / "hf"
    proc = subprocess.run([sys.executable, "-m", "gapt_ds.cli", "export", str(run_dir / "checkpoints"), str(out)],
                          env=env(), capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    tok = json.loads((out / "gapt_tokenizer.json").read_text())
    assert tok == {"vocab_size": 13, "eos_id": 12, "type": "char", "tokens": list("0123456789x=\n")}

    hf = GPT2LMHeadModel.from_pretrained(str(out)).eval()
    assert hf.config.n_layer == 4 and hf.config.n_embd == 32 and hf.config.vocab_size == 13
    assert hf.config.n_positions == SEQ and hf.lm_head.weight is hf.transformer.wte.weight
    with torch.no_grad():
        exported = hf(input_ids=probe()).logits
    reference = run_ranks(engine_logits_worker, tmp_path / "ranks", run_dir=str(run_dir))
    torch.testing.assert_close(reference[0], reference[1])
    torch.testing.assert_close(exported, reference[0], rtol=1e-5, atol=1e-5)
    fresh = GPT2LMHeadModel(hf.config).eval()
    with torch.no_grad():
        assert (fresh(input_ids=probe()).logits - exported).abs().max() > 0.1  # the comparison can fail


def test_clear_errors_for_what_is_not_a_gapt_ds_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="no such directory"):
        export(tmp_path / "missing", tmp_path / "out")
    empty = tmp_path / "run" / "checkpoints"
    empty.mkdir(parents=True)
    with pytest.raises(ValueError, match="no 'latest' file"):
        export(empty, tmp_path / "out")
    (empty / "latest").write_text("step3")
    with pytest.raises(ValueError, match="'latest' names step3, which does not exist"):
        export(tmp_path / "run", tmp_path / "out")  # RUN_DIR is accepted for RUN_DIR/checkpoints
    (empty / "step3").mkdir()
    with pytest.raises(ValueError, match="'latest' names step3, which is incomplete"):
        export(empty, tmp_path / "out")
    (empty / "step3" / "gapt_complete.json").write_text('{"step": 3}')
    with pytest.raises(ValueError, match="no args.json: not a run directory written by gapt-ds train"):
        export(empty, tmp_path / "out")
    (tmp_path / "run" / "args.json").write_text(json.dumps({"model": "tiny"}))
    with pytest.raises(ValueError, match="lacks model_config, init_from, tokenizer"):
        export(empty, tmp_path / "out")


def test_tokenizer_files_for_sentencepiece_and_gpt2_bpe(tmp_path):
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2TokenizerFast

    from gapt_ds.data.tokenizers import load_tokenizer, train_sentencepiece
    from gapt_ds.export import _save_tokenizer

    words = "memorization compression entropy gate phase transition the of and".split()
    lines = [" ".join(words[i:] + words[:i]) + f" {i * 37}" for i in range(200)]
    spm = train_sentencepiece(iter(lines), str(tmp_path / "tok" / "spm"), vocab_size=300)
    (tmp_path / "a").mkdir()
    _save_tokenizer(spm, tmp_path / "a")
    info = json.loads((tmp_path / "a" / "gapt_tokenizer.json").read_text())
    assert info == {"vocab_size": 300, "eos_id": 1, "type": "sentencepiece", "file": "spm.model"}
    assert (tmp_path / "a" / "spm.model").read_bytes() == Path(spm).read_bytes()

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([" ".join(words)] * 50, vocab_size=300, special_tokens=["<|endoftext|>"])
    (tmp_path / "bpe").mkdir()
    bpe.save_model(str(tmp_path / "bpe"))
    (tmp_path / "b").mkdir()
    _save_tokenizer(str(tmp_path / "bpe"), tmp_path / "b")
    assert json.loads((tmp_path / "b" / "gapt_tokenizer.json").read_text())["type"] == "gpt2_bpe"
    assert (tmp_path / "b" / "vocab.json").is_file() and (tmp_path / "b" / "merges.txt").is_file()
    text = "the entropy gate"
    exported = GPT2TokenizerFast.from_pretrained(str(tmp_path / "b"))
    assert exported.encode(text) == load_tokenizer(str(tmp_path / "bpe")).encode(text)
