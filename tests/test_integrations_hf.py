"""GaptTrainer (gapt_ds.integrations.hf): a real 2-rank torchrun Hugging Face Trainer run under ZeRO-2 with a
Hugging Face DeepSpeed config ("auto" values), its TensorBoard, and resume_from_checkpoint."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tbparse import SummaryReader

from dist import free_port
from tb import charted, custom_scalars

pytestmark = pytest.mark.distributed
ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# patience 2 and deltas no step can beat: memorize 3 steps, compress 3, memorize... (a switch every run)
FAST_GATE = {"mbe_weight": 0.5, "gate": {"patience_memorize": 2, "patience_compress": 2,
                                          "ce_delta": 10.0, "mbe_delta": 10.0}}


def torchrun(tmp_path: Path, *args: str) -> None:
    config = tmp_path / "ds_config.json"
    if not config.exists():  # the example's Hugging Face config as it is, with a faster gate
        cfg = json.loads((ROOT / "examples" / "ds_config_hf_zero2.json").read_text())
        assert cfg["train_batch_size"] == "auto" and cfg["zero_optimization"]["stage"] == 2
        config.write_text(json.dumps({**cfg, "gapt": FAST_GATE}))
    env = dict(os.environ, DS_ACCELERATOR="cpu", PYTHONUNBUFFERED="1")
    cmd = [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(ROOT / "tests" / "hf_worker.py"), "--config", str(config), "--out", str(tmp_path / "out"), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]


def records(out: Path, name: str) -> list[dict]:
    return [json.loads((out / f"record-{name}-rank{r}.json").read_text()) for r in (0, 1)]


def test_trainer_trains_with_gapt_logs_to_tensorboard_and_resumes_the_gate(tmp_path):
    out = tmp_path / "out"
    torchrun(tmp_path)
    full = records(out, "full")
    phases = [[s["phase"] for s in r["steps"].values()] for r in full]
    assert phases[0] == phases[1] == [1, 1, 1, 2, 2, 2, 1, 1]  # the same gate on both ranks, both switches
    assert [s["ce"] for s in full[0]["steps"].values()] == [s["ce"] for s in full[1]["steps"].values()]

    # TensorBoard (Trainer's writer): the gapt/* tags, and Trainer trained on CE + w·MBE in compression
    tb = SummaryReader(str(out / "runs")).scalars
    tags = set(tb.tag)
    assert {"gapt/ce", "gapt/phase", "gapt/mbe_mean", "gapt/mbe/layer_1", "gapt/lr"} <= tags, tags
    assert all(charted(custom_scalars(out / "runs"), tag) for tag in ("gapt/ce", "gapt/phase", "gapt/mbe/layer_1"))
    value = {(t, s): v for t, s, v in zip(tb.tag, tb.step, tb.value)}
    assert [value["gapt/phase", s] for s in range(1, 9)] == phases[0]
    for step in range(1, 9):
        w = 0.5 if phases[0][step - 1] == 2 else 0.0
        expected = value["gapt/ce", step] + w * value["gapt/mbe_mean", step]
        assert value["train/loss", step] == pytest.approx(expected, abs=2e-3), step

    # resume_from_checkpoint: the gate continues from its saved state, and the run as without the stop
    torchrun(tmp_path, "--resume", str(out / "checkpoint-4"))
    for resumed in records(out, "resumed"):
        saved = full[0]["steps"]["4"]["state"]
        assert saved["state"]["phase"] == 2 and saved["state"]["gate"]["steps"] == 4  # not a fresh gate
        assert resumed["state_at_begin"] == saved
        assert resumed["steps"] == {k: v for k, v in full[0]["steps"].items() if int(k) > 4}


def test_bad_gapt_block_fails_when_the_trainer_is_built(tmp_path, monkeypatch):
    from transformers import GPT2Config, GPT2LMHeadModel, TrainingArguments

    from gapt_ds.integrations.hf import GaptTrainer

    cfg = json.loads((ROOT / "examples" / "ds_config_hf_zero2.json").read_text())
    cfg["gapt"] = {"mbe_wieght": 1.0}
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(cfg))
    for launcher_var in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):  # one process, no process group
        monkeypatch.delenv(launcher_var, raising=False)
    args = TrainingArguments(output_dir=str(tmp_path / "o"), deepspeed=str(path), use_cpu=True, report_to=[])
    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=3, n_head=2))
    with pytest.raises(ValueError, match="mbe_wieght"):
        GaptTrainer(model=model, args=args, train_dataset=[])
    import torch.distributed

    assert not torch.distributed.is_initialized()  # nothing left behind for the next test
