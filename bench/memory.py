"""Peak memory of GAPT training without and with activation checkpointing (`--activation-checkpointing`).

One rank, a real GAPT engine (ZeRO-0, AdamW), pinned to the compression phase (patch MBE, P=8, on the inner
layers: the hooks are active and the MBE term back-propagates). Each variant runs in a fresh process that
builds the engine and trains ``--steps`` steps on random tokens; the parent prints both peaks, the memory
saved, the ratio and the step times. What "peak" is:

- CPU: the process's peak resident set size (``ru_maxrss``) over set-up and all steps: model, gradients,
  Adam states, activations, and what the allocator keeps. "set-up" is the peak before the first step
  (libraries, model; Adam's states come with the first step).
- CUDA: ``torch.cuda.max_memory_allocated`` over set-up and all steps (tensors only, no allocator cache),
  and the part of the last step's peak above what was resident before it (activations and temporaries).

    python bench/memory.py                                            # auto device: 124m, S=1024, B=1, fp32
    python bench/memory.py --device cuda --batch 8 --dtype bf16       # GPU
    python bench/memory.py --model cpu --seq-len 256 --batch 8        # a small shape (CPU, seconds)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GIB = 2**30


def shape_parser(description: str) -> argparse.ArgumentParser:
    """The options both memory.py and compile.py take: device and training shape."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--model", default="124m", help="gapt_ds.models preset")
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--batch", type=int, default=1, help="micro-batch (one rank)")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    return p


def engine_config(args: argparse.Namespace) -> dict:
    """One rank, ZeRO-0, AdamW, GAPT pinned to the compression phase (defaults: patch MBE, P=8, inner layers)."""
    cfg = {"train_micro_batch_size_per_gpu": args.batch, "gradient_accumulation_steps": 1,
           "optimizer": {"type": "AdamW", "params": {"lr": 1e-4, "torch_adam": True}},
           "zero_optimization": {"stage": 0}, "steps_per_print": 10**9, "gapt": {"phase": "compress"}}
    if args.dtype == "bf16":
        cfg["bf16"] = {"enabled": True}
    return cfg


def train_step(engine, x):
    """One GAPT optimizer step on ``x``; returns the loss tensor (no host sync)."""
    loss = engine(input_ids=x, labels=x, use_cache=False).loss
    engine.backward(loss)
    engine.step()
    assert engine.last_step.phase == 2 and engine.last_step.mbe_weights[0] > 0  # MBE was trained on
    return loss


def parse_args(argv=None) -> argparse.Namespace:
    p = shape_parser(__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=3, help="optimizer steps per variant (the first allocates Adam)")
    p.add_argument("--child", choices=["off", "on"], help=argparse.SUPPRESS)
    return p.parse_args(argv)


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA GPU")
    return name


def child(args: argparse.Namespace) -> dict:
    """One variant in this fresh process: build, train, measure."""
    import torch

    import gapt_ds
    from gapt_ds import runtime
    from gapt_ds.models import build_gpt2, enable_activation_checkpointing, gpt2_config

    cuda = args.device == "cuda"
    with runtime.process_group(master_port=os.environ["MASTER_PORT"]):
        model = build_gpt2(gpt2_config(args.model, seq_len=args.seq_len))
        if args.child == "on":
            enable_activation_checkpointing(model)
        engine, *_ = gapt_ds.initialize(model=model, model_parameters=model.parameters(), config=engine_config(args))
        setup = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        x = torch.randint(0, model.config.vocab_size, (args.batch, args.seq_len),
                          generator=torch.Generator().manual_seed(0)).to(engine.device)
        times, losses, resident, overall = [], [], 0, 0
        for _ in range(args.steps):
            if cuda:  # the peak so far, then this step's peak alone
                torch.cuda.synchronize()
                overall = max(overall, torch.cuda.max_memory_allocated())
                resident = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            loss = train_step(engine, x)
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
            losses.append(loss.item())
        out = {"setup_peak": setup, "losses": losses, "step_s": statistics.median(times[1:] or times)}
        if cuda:
            step_peak = torch.cuda.max_memory_allocated()
            out.update(peak=max(overall, step_peak), last_step_above_resident=step_peak - resident)
        else:
            out.update(peak=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)  # Linux: KiB
        engine.destroy()
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_variant(args: argparse.Namespace, variant: str) -> dict:
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))  # gapt_ds without installing
    env = dict(os.environ, MASTER_PORT=str(free_port()), RANK="0", LOCAL_RANK="0", WORLD_SIZE="1",
               MASTER_ADDR="127.0.0.1", PYTHONPATH=path)
    if args.device == "cpu":
        env["DS_ACCELERATOR"] = "cpu"
    else:
        env.pop("DS_ACCELERATOR", None)
    cmd = [sys.executable, __file__, "--child", variant, "--device", args.device, "--model", args.model,
           "--seq-len", str(args.seq_len), "--batch", str(args.batch), "--dtype", args.dtype,
           "--steps", str(args.steps)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"variant {variant} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    args = parse_args()
    args.device = resolve_device(args.device)
    if args.child:
        print(json.dumps(child(args)))
        return
    import torch

    what = "peak RSS (ru_maxrss)" if args.device == "cpu" else "torch.cuda.max_memory_allocated"
    print(f"model {args.model}, S={args.seq_len}, micro-batch {args.batch}, {args.dtype}, ZeRO-0, 1 rank, "
          f"{args.device} ({torch.get_num_threads()} threads), GAPT compression phase, {args.steps} steps; {what}")
    res = {v: run_variant(args, v) for v in ("off", "on")}
    for v, r in res.items():
        extra = (f", last step above resident {r['last_step_above_resident'] / GIB:.2f} GiB"
                 if "last_step_above_resident" in r else "")
        print(f"activation checkpointing {v:>3}: peak {r['peak'] / GIB:.2f} GiB "
              f"(set-up {r['setup_peak'] / GIB:.2f} GiB){extra}, median step {r['step_s']:.3f} s, "
              f"losses {', '.join(f'{x:.4f}' for x in r['losses'])}")
    off, on = res["off"], res["on"]
    print(f"saved {(off['peak'] - on['peak']) / GIB:.2f} GiB; peak ratio on/off = {on['peak'] / off['peak']:.3f}; "
          f"step-time ratio on/off = {on['step_s'] / off['step_s']:.3f}")
    if "last_step_above_resident" in off:
        print(f"last-step peak above resident: ratio on/off = "
              f"{on['last_step_above_resident'] / off['last_step_above_resident']:.3f}")


if __name__ == "__main__":
    main()
