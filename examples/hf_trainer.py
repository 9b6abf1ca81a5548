"""GAPT in a Hugging Face Trainer run: a GPT-2 on random tokens (swap in your model and dataset).

    torchrun --nproc_per_node 2 examples/hf_trainer.py --out runs/hf_example
    deepspeed --num_gpus 2 examples/hf_trainer.py --out runs/hf_example

The DeepSpeed JSON is a Hugging Face one (``"auto"`` values) plus a ``"gapt"`` block; Trainer resolves
the ``"auto"`` values, GaptTrainer reads the block. ``tensorboard --logdir OUT`` shows the ``gapt/*`` tags.
"""

import argparse
from pathlib import Path

import torch

from transformers import GPT2Config, GPT2LMHeadModel, TrainingArguments

import gapt_ds
from gapt_ds.integrations.hf import GaptTrainer


def random_tokens(n: int, seq_len: int, vocab: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(vocab, (n, seq_len), generator=g)
    return [{"input_ids": row, "labels": row} for row in ids]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/hf_example", help="Trainer output_dir (checkpoints, TensorBoard)")
    p.add_argument("--deepspeed", default=str(Path(__file__).with_name("ds_config_hf_zero2.json")),
                   help="DeepSpeed JSON (Hugging Face style, with a gapt block)")
    p.add_argument("--steps", type=int, default=20, help="optimizer steps")
    p.add_argument("--layers", type=int, default=4, help="GPT-2 blocks")
    p.add_argument("--local_rank", type=int, default=-1, help="set by the deepspeed launcher")
    args = p.parse_args()
    model = GPT2LMHeadModel(GPT2Config(vocab_size=128, n_positions=32, n_embd=64, n_layer=args.layers, n_head=2,
                                       bos_token_id=0, eos_token_id=0))
    training = TrainingArguments(output_dir=args.out, deepspeed=args.deepspeed, max_steps=args.steps,
                                 per_device_train_batch_size=4, gradient_accumulation_steps=2, learning_rate=1e-3,
                                 logging_steps=5, save_steps=args.steps, report_to="tensorboard",
                                 use_cpu=not torch.cuda.is_available())
    trainer = GaptTrainer(model=model, args=training, train_dataset=random_tokens(256, 32, 128))
    trainer.train()
    if trainer.is_world_process_zero():
        step = trainer.gapt_engine.last_step
        print(f"step {step.step}: phase {step.phase}, CE {step.ce:.3f}, MBE {step.mbe_mean:.3f}")
    gapt_ds.shutdown()  # ends the process without racing the communicator threads


if __name__ == "__main__":
    main()
