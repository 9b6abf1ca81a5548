"""Tiny versions of the recipes end to end, the report, and the separation metric by hand."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gapt_ds.recipes.forgetting import separation

ROOT = Path(__file__).resolve().parents[1]


def test_separation_matches_hand_computation():
    h_a = torch.tensor([[0.0, 0.0], [2.0, 0.0]])  # mean (1, 0); squared distances 1, 1 -> var 1
    h_b = torch.tensor([[1.0, 3.0], [1.0, 5.0]])  # mean (1, 4); var 1
    assert separation(h_a, h_b) == pytest.approx(4.0)  # |(0, 4)| / sqrt(1)
    h_c = torch.tensor([[1.0, 1.0], [1.0, 7.0]])  # mean (1, 4); var 9 -> pooled sqrt(5)
    assert separation(h_a, h_c) == pytest.approx(4.0 / math.sqrt(5.0))


def recipe(tmp_path, *args):
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", GAPT_DS_CACHE=str(tmp_path / "cache"),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run([sys.executable, "-m", "gapt_ds.cli", "recipe", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    noise = ("Setting CUDA_VISIBLE_DEVICES", "loss_type=None", "Attempting to get learning rate from scheduler",
             "all_gather_into_tensor", "reduce_scatter_tensor")  # known-harmless, silenced at the source
    assert not [n for n in noise if n in proc.stdout + proc.stderr], proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.distributed
def test_tiny_arithmetic_and_forgetting_recipes_and_their_report(tmp_path):
    out = tmp_path / "arith"
    recipe(tmp_path, "arithmetic", "--seeds", "0", "--out", str(out), "--", "--model", "tiny", "--steps", "8",
           "--eval-every", "4", "--arith-eval", "16", "--eval-batches", "1", "--seq-len", "32")
    for arm in ("ce", "gapt"):
        summary = json.loads((out / f"{arm}-s0" / "summary.json").read_text())
        assert summary["step"] == 8 and "ood_answer_ce" in summary
        assert json.loads((out / f"{arm}-s0" / "ds_config.json").read_text())["gapt"]["algorithm"] == arm
    md = (out / "report" / "report.md").read_text()
    assert "| ce | 1 |" in md and "| gapt | 1 |" in md and "| gapt vs ce |" in md and "OOD answer-CE" in md
    assert (out / "report" / "gapt-s0.png").stat().st_size > 10_000

    cout = tmp_path / "cycle"
    recipe(tmp_path, "cycle", "--seeds", "0", "--out", str(cout), "--", "--model", "tiny", "--steps", "6",
           "--eval-every", "6", "--arith-eval", "16", "--eval-batches", "1", "--seq-len", "32")
    assert not (cout / "gapt-s0").exists() and (cout / "ce-s0" / "summary.json").is_file()
    from tbparse import SummaryReader

    tags = set(SummaryReader(str(cout / "ce-s0" / "tensorboard")).scalars["tag"])
    assert {"gapt/align/all", "gapt/align/block_1"} <= tags  # plotted as the report's third panel

    fout = tmp_path / "forget"
    recipe(tmp_path, "forgetting", "--seeds", "0,1", "--out", str(fout), "--", "--steps-per-task", "30")
    md = (fout / "report" / "report.md").read_text()
    assert "separation" in md and "| ce | 2 |" in md and "forgetting" in md
    summary = json.loads((fout / "gapt-s1" / "summary.json").read_text())
    assert summary["step"] == 60 and summary["separation"] > 0


@pytest.mark.distributed
def test_tiny_text_recipes_with_sentencepiece_and_gpt2_bpe(tmp_path):
    """text-cpu with a SentencePiece tokenizer, and the fineweb recipe pointed at local data with a
    GPT-2 BPE tokenizer and the CPU config (the hub dataset cannot be reached offline)."""
    from tokenizers import ByteLevelBPETokenizer

    from gapt_ds.data.sources import iter_texts
    from gapt_ds.data.tokenizers import train_sentencepiece
    from test_data import WORDS, write_corpus

    pattern = write_corpus(tmp_path / "corpus", n_files=2, lines=300)
    spm = train_sentencepiece(iter_texts(pattern), str(tmp_path / "tok" / "spm"), vocab_size=320)
    tiny = ["--model", "tiny", "--steps", "4", "--eval-every", "4", "--eval-batches", "1", "--seq-len", "32",
            "--val-every", "4"]
    out = tmp_path / "text"
    recipe(tmp_path, "text-cpu", "--seeds", "0", "--out", str(out), "--", "--data", pattern, "--tokenizer", spm, *tiny)
    assert "val_ce" in json.loads((out / "gapt-s0" / "summary.json").read_text())

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([" ".join(WORDS)] * 50, vocab_size=300, special_tokens=["<|endoftext|>"])
    (tmp_path / "bpe").mkdir()
    bpe.save_model(str(tmp_path / "bpe"))
    out = tmp_path / "fineweb"
    recipe(tmp_path, "fineweb", "--seeds", "0", "--arms", "gapt", "--config",
           str(ROOT / "ds_configs" / "cpu_default.json"), "--out", str(out), "--", "--data", pattern,
           "--tokenizer", str(tmp_path / "bpe"), "--max-tokens", "20000", *tiny)
    run_args = json.loads((out / "gapt-s0" / "args.json").read_text())
    assert run_args["recipe"] == "fineweb" and run_args["model"] == "tiny" and run_args["max_tokens"] == 20000
    assert (out / "report" / "report.md").is_file()


def test_report_errors_on_a_non_run_directory(tmp_path):
    from gapt_ds.report import main

    with pytest.raises(ValueError, match="no TensorBoard event files"):
        main([str(tmp_path), "--out", str(tmp_path / "r")])
    with pytest.raises(ValueError, match="not a directory"):
        main([str(tmp_path / "nope"), "--out", str(tmp_path / "r")])
