"""The arithmetic task's options: per-problem padded batches, answer-only labels, reversed digits, digit ranges."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from gapt_ds.data.arithmetic import (IGNORE, ProblemBatches, Task, check_args, eval_examples, format_example,
                                     training_texts)
from gapt_ds.data.tokenizers import CharTokenizer
from gapt_ds.train import build_parser

ROOT = Path(__file__).resolve().parents[1]


def test_reversed_answers_and_cpu_digit_ranges():
    task = Task((1, 2), (3, 4), reverse=True)
    for example in list(training_texts(seed=3, count=300, task=task)):
        lhs, answer = example.rstrip("\n").split("=")
        a, b = map(int, lhs.split("x"))
        assert 1 <= len(str(a)) <= 2 and 1 <= len(str(b)) <= 2 and int(answer[::-1]) == a * b
    assert eval_examples((3, 4), 5, seed=0, reverse=True)[0] != eval_examples((3, 4), 5, seed=0)[0]
    assert Task.from_spec(task.data_spec()) == Task((1, 2), (4, 6), reverse=True)  # the training side round-trips
    assert Task().data_spec() == "arithmetic"


def test_padded_examples_have_fixed_width_and_round_trip():
    assert format_example(7, 93, width=2) == "07x93=0651\n"
    assert format_example(7, 93, reverse=True, width=2) == "07x93=1560\n"
    task = Task((1, 2), (3, 4), reverse=True, pad=True)
    texts = list(training_texts(seed=1, count=200, task=task))
    assert {len(t) for t in texts} == {task.max_len((1, 2))}  # every ID example: 2+1+2+1+4+1 symbols
    for text in texts:
        lhs, answer = text.rstrip("\n").split("=")
        a, b = map(int, lhs.split("x"))
        assert int(answer[::-1]) == a * b
    assert {len(e) for e in eval_examples((3, 4), 20, seed=0, reverse=True, pad=True)} == {task.max_len((3, 4))}
    assert Task.from_spec(task.data_spec()) == Task((1, 2), (4, 6), reverse=True, pad=True)
    tok = CharTokenizer()
    x, _ = ProblemBatches(Task((1, 2), (3, 4), per_problem=True, pad=True), tok, 12, 4, 0, 1).batch_at(0)
    assert (x[:, 11] == tok.eos_id).all() and (x[:, 2] == tok.encode("x")[0]).all()


def test_problem_batches_pad_mask_and_are_a_function_of_the_index():
    tok = CharTokenizer()
    task = Task((1, 2), (3, 4), reverse=True, per_problem=True, answer_loss=True)
    batches = ProblemBatches(task, tok, seq_len=16, micro_batch=8, rank=1, world=2, seed=5)
    x, y = batches.batch_at(3 * 16)
    assert x.shape == y.shape == (8, 16)
    assert torch.equal(x, ProblemBatches(task, tok, 16, 8, 1, 2, seed=5).batch_at(3 * 16)[0])
    assert not torch.equal(x, batches.batch_at(4 * 16)[0])
    assert not torch.equal(x, ProblemBatches(task, tok, 16, 8, 0, 2, seed=5).batch_at(3 * 16)[0])
    for row in range(8):
        decoded = tok.decode(x[row].tolist())  # padding is the end-of-text token (the char tokenizer's \n)
        text = decoded[: decoded.index("\n") + 1]
        lhs, answer = text.split("=")
        scored = tok.decode([t for t in y[row].tolist() if t != IGNORE])
        assert scored == answer and answer.endswith("\n")  # only the answer (and its \n) is scored
        assert (y[row, len(text):] == IGNORE).all() and (x[row, len(text):] == tok.eos_id).all()
    full = ProblemBatches(Task((1, 2), (3, 4), per_problem=True), tok, 16, 8, 0, 1).batch_at(0)
    scored, decoded = tok.decode([t for t in full[1][0].tolist() if t != IGNORE]), tok.decode(full[0][0].tolist())
    assert scored == decoded[: decoded.index("\n") + 1]  # the whole problem, none of the padding
    with pytest.raises(ValueError, match="shorter than the longest training problem"):
        ProblemBatches(Task((1, 3)), tok, 8, 2, 0, 1)


def test_problem_batches_continue_the_same_stream_on_another_world_size():
    tok, task = CharTokenizer(), Task((1, 2), (3, 4), per_problem=True)

    def rows(world, micro, start, count):  # the global stream's rows [start, start + count), split into ranks
        ranks = [ProblemBatches(task, tok, 16, micro, r, world, seed=5, layout=(2, 4)) for r in range(world)]
        positions = range(start, start + count, world * micro)
        return torch.cat([torch.cat([b.batch_at(p)[0] for b in ranks]) for p in positions])

    reference = rows(2, 4, 0, 32)
    assert len({tuple(r) for r in reference.tolist()}) > 24  # fresh problems, not one repeated
    for world, micro in [(1, 8), (1, 4), (4, 2), (4, 1)]:
        assert torch.equal(torch.cat([rows(2, 4, 0, 8), rows(world, micro, 8, 24)]), reference), (world, micro)


def test_gpt2_loss_ignores_masked_labels_like_a_hand_computed_answer_ce():
    tok = CharTokenizer()
    x, y = ProblemBatches(Task((1, 2), (3, 4), per_problem=True, answer_loss=True), tok, 16, 4, 0, 1).batch_at(0)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=tok.vocab_size, n_positions=16))
    out = model(input_ids=x, labels=y)
    logits, targets = out.logits[:, :-1], y[:, 1:]
    keep = targets != IGNORE
    by_hand = -torch.log_softmax(logits, -1)[keep].gather(1, targets[keep][:, None]).mean()
    assert out.loss.item() == pytest.approx(by_hand.item(), rel=1e-6)
    assert keep.sum() < targets.numel() / 2  # most positions were masked out


def parse(*argv):
    return build_parser().parse_args(["--deepspeed_config", "x.json", *argv])


def test_task_flags_are_validated_together():
    assert check_args(parse("--arith-digits", "1-2:3-4", "--seq-len", "24", "--arith-per-problem")) == []
    problems = check_args(parse("--arith-answer-loss", "--seq-len", "16"))
    assert any("needs --arith-per-problem" in p for p in problems) and any("--seq-len 16" in p for p in problems)
    assert "expected ID:OOD" in check_args(parse("--arith-digits", "1-2"))[0]
    assert "need --data arithmetic" in check_args(parse("--data", "x/*.txt", "--arith-reverse"))[0]


@pytest.mark.distributed
def test_training_with_every_task_option_end_to_end(tmp_path):
    cfg = json.loads((ROOT / "ds_configs" / "recipes" / "arithmetic_cpu.json").read_text())
    cfg["train_micro_batch_size_per_gpu"] = 8
    (tmp_path / "ds.json").write_text(json.dumps(cfg))
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    argv = ["--deepspeed_config", str(tmp_path / "ds.json"), "--model", "tiny", "--seq-len", "24", "--steps", "4",
            "--eval-every", "0", "--arith-eval", "16", "--arith-digits", "1-2:3-4", "--arith-reverse",
            "--arith-per-problem", "--arith-answer-loss", "--run-dir", str(tmp_path / "run"), "--cache-dir",
            str(tmp_path / "cache"), "--no-progress"]
    proc = subprocess.run([sys.executable, "-m", "gapt_ds.cli", "train", *argv], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["step"] == 4 and {"id_exact_match", "ood_answer_ce"} <= set(summary)
    first = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["ce"] < 3.0  # answer-only CE starts near log(13 symbols + padding token), not the packed stream's
