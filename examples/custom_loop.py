"""GAPT in your own DeepSpeed loop: the README's snippet, runnable (a GPT-2 on random tokens).

    deepspeed --num_gpus 2 examples/custom_loop.py            # or: torchrun --nproc_per_node 2 ...
    tensorboard --logdir runs/custom_loop                     # the gapt/* tags

The DeepSpeed JSON (examples/ds_config.json) is an ordinary one plus a "gapt" block; its "tensorboard"
block is what makes the gapt/* metrics appear.
"""

import argparse
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel

import gapt_ds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(Path(__file__).with_name("ds_config.json")), help="DeepSpeed JSON")
    p.add_argument("--steps", type=int, default=50, help="optimizer steps")
    p.add_argument("--layers", type=int, default=4, help="GPT-2 blocks")
    p.add_argument("--local_rank", type=int, default=-1, help="set by the deepspeed launcher")
    args = p.parse_args()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=128, n_positions=32, n_embd=64, n_layer=args.layers, n_head=2,
                                       bos_token_id=0, eos_token_id=0))

    engine, optimizer, _, scheduler = gapt_ds.initialize(model=model, model_parameters=model.parameters(),
                                                         config=args.config)
    micro = engine.train_micro_batch_size_per_gpu()
    g = torch.Generator().manual_seed(engine.global_rank)  # each rank its own data
    for _ in range(args.steps * engine.gradient_accumulation_steps()):
        batch = torch.randint(128, (micro, 32), generator=g).to(engine.device)
        loss = engine(input_ids=batch, labels=batch).loss   # CE, plus w·MBE in the compression phase
        engine.backward(loss)
        engine.step()                                       # the gate moves once per optimizer step
        step = engine.last_step
        if engine.global_rank == 0 and engine.is_gradient_accumulation_boundary() and step.step % 10 == 0:
            print(f"step {step.step}: phase {step.phase}, CE {step.ce:.3f}, MBE {step.mbe_mean:.3f}", flush=True)
    if engine.global_rank == 0:
        print(f"done: {engine.global_steps} steps, phase {engine.phase}", flush=True)
    engine.destroy()  # before the process group goes away (see GaptEngineMixin.destroy)
    gapt_ds.shutdown()  # ends the process without racing the communicator threads


if __name__ == "__main__":
    main()
