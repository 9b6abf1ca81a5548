"""A GaptTrainer run on a tiny GPT-2 for tests/test_integrations_hf.py (started under torchrun): writes
each rank's per-step phases and the gate state at resume to OUT/record-rank<R>.json."""

import argparse
import json
import os
from pathlib import Path

import torch

from transformers import GPT2Config, GPT2LMHeadModel, TrainerCallback, TrainingArguments

import gapt_ds
from gapt_ds.integrations.hf import GaptTrainer


class Record(TrainerCallback):
    def __init__(self) -> None:
        self.trainer = None
        self.record = {"steps": {}, "state_at_begin": None}

    def on_train_begin(self, args, state, control, **kwargs):  # after Trainer's resume_from_checkpoint load
        self.record["state_at_begin"] = self.trainer.gapt_engine.gapt_state_dict()

    def on_step_end(self, args, state, control, **kwargs):
        s = self.trainer.gapt_engine.last_step
        self.record["steps"][state.global_step] = {"phase": s.phase, "next_phase": s.next_phase, "ce": s.ce,
                                                   "state": self.trainer.gapt_engine.gapt_state_dict()}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--config", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--resume", default=None)
    args = p.parse_args()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=3, n_head=2, bos_token_id=0,
                                       eos_token_id=0))
    ids = torch.randint(64, (64, 16), generator=torch.Generator().manual_seed(1))
    data = [{"input_ids": row, "labels": row} for row in ids]
    training = TrainingArguments(output_dir=args.out, deepspeed=args.config, max_steps=args.steps,
                                 per_device_train_batch_size=2, gradient_accumulation_steps=2, learning_rate=1e-3,
                                 warmup_steps=2, max_grad_norm=1.0, logging_steps=1, save_steps=4,
                                 report_to="tensorboard", seed=0, dataloader_num_workers=0,
                                 use_cpu=not torch.cuda.is_available())
    record = Record()
    trainer = GaptTrainer(model=model, args=training, train_dataset=data, callbacks=[record])
    record.trainer = trainer
    trainer.train(resume_from_checkpoint=args.resume)
    rank = int(os.environ["RANK"])
    name = "resumed" if args.resume else "full"
    (Path(args.out) / f"record-{name}-rank{rank}.json").write_text(json.dumps(record.record))
    gapt_ds.shutdown()  # no interpreter finalization with live process groups (see gapt_ds.shutdown)


if __name__ == "__main__":
    main()
