"""Step-time overhead of GAPT (compression phase, patch MBE) over a plain DeepSpeed CE-only step.

Both engines hold identical GPT-2 copies and the same DeepSpeed config; their steps are interleaved
(A, B, A, B, ...) in one process so that machine noise hits both alike. Prints the medians and
the ratio GAPT / plain. Targets: <= 1.02 at the small CPU shape, <= 1.01 at 124M widths.

    DS_ACCELERATOR=cpu OMP_NUM_THREADS=2 .venv/bin/python bench/step_overhead.py                 # L=6 D=384 S=256 B=8
    ... bench/step_overhead.py --aa                           # A/A control: two plain engines (noise floor)
    ... bench/step_overhead.py --alignment-every 100 --steps 300   # monitor on vs off, interleaved
    ... bench/step_overhead.py --alignment-cost --steps 10         # one measurement vs one step
    .venv/bin/python bench/step_overhead.py --layers 12 --dim 768 --heads 12 --seq 1024 --batch 8 --dtype bf16   # GPU
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--vocab", type=int, default=50257)
    p.add_argument("--steps", type=int, default=30, help="timed steps per engine")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--stage", type=int, default=0, choices=[0, 1, 2, 3])
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--mbe-mode", default="patch", choices=["patch", "global"])
    p.add_argument("--aa", action="store_true", help="A/A control: time two plain engines (noise floor)")
    p.add_argument("--alignment-every", type=int, default=0,
                   help="instead: GAPT with the gradient-alignment monitor every K steps vs GAPT without it")
    p.add_argument("--alignment-cost", action="store_true",
                   help="instead: time one alignment measurement against one GAPT step (overhead = ratio / K)")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    from gapt_ds import runtime

    with runtime.process_group(master_port="29533"):
        bench(args)


def bench(args: argparse.Namespace) -> None:
    import deepspeed

    import gapt_ds
    from gapt_ds.models import build_gpt2, gpt2_config

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = gpt2_config(vocab_size=args.vocab, seq_len=args.seq, n_layer=args.layers, n_embd=args.dim, n_head=args.heads)
    ds = {"train_micro_batch_size_per_gpu": args.batch, "gradient_accumulation_steps": 1,
          "optimizer": {"type": "AdamW", "params": {"lr": 1e-4, "torch_adam": True}},
          "zero_optimization": {"stage": args.stage}, "steps_per_print": 10**9}
    if args.dtype == "bf16":
        ds["bf16"] = {"enabled": True}
    model = build_gpt2(cfg)
    model2 = copy.deepcopy(model)
    gapt_cfg = dict(ds, gapt={"phase": "compress", "mbe_mode": args.mbe_mode})
    if args.alignment_every:  # A: GAPT, B: GAPT + monitor
        plain, *_ = gapt_ds.initialize(model=model, model_parameters=model.parameters(), config=copy.deepcopy(gapt_cfg))
        monitored = dict(gapt_cfg, gapt={**gapt_cfg["gapt"], "alignment_every": args.alignment_every})
        gapt, *_ = gapt_ds.initialize(model=model2, model_parameters=model2.parameters(), config=monitored)
    else:  # A: plain DeepSpeed CE-only; B: GAPT (or, with --aa, plain DeepSpeed again)
        plain, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=copy.deepcopy(ds))
        init = deepspeed.initialize if args.aa else gapt_ds.initialize
        gapt, *_ = init(model=model2, model_parameters=model2.parameters(),
                        config=copy.deepcopy(ds) if args.aa else gapt_cfg)

    x = torch.randint(0, args.vocab, (args.batch, args.seq), device=plain.device)

    def step(engine) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = engine(input_ids=x, labels=x).loss
        engine.backward(loss)
        engine.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    if args.alignment_cost:
        measure_cost(gapt, x, args)
        return
    times = {"plain": [], "gapt": []}
    for i in range(args.warmup + args.steps):
        order = [("plain", plain), ("gapt", gapt)] if i % 2 == 0 else [("gapt", gapt), ("plain", plain)]
        for name, engine in order:
            t = step(engine)
            if i >= args.warmup:
                times[name].append(t)
    med = {k: statistics.median(v) for k, v in times.items()}
    mean = {k: statistics.fmean(v) for k, v in times.items()}
    if args.alignment_every:  # the monitor costs one step in K: compare means, medians hide it
        print(f"alignment monitor every {args.alignment_every} steps, {args.steps} interleaved steps each: "
              f"mean step without {mean['plain'] * 1e3:.1f} ms, with {mean['gapt'] * 1e3:.1f} ms, "
              f"ratio {mean['gapt'] / mean['plain']:.4f}")
        return
    if args.aa:
        print(f"A/A control, two plain engines: {med['plain'] * 1e3:.1f} ms vs {med['gapt'] * 1e3:.1f} ms, "
              f"ratio {med['gapt'] / med['plain']:.4f}")
        return
    n_mbe = len(gapt.mbe_layer_ids)
    print(f"shape L={args.layers} D={args.dim} S={args.seq} B={args.batch} {args.dtype} ZeRO-{args.stage} "
          f"on {device.type} ({torch.get_num_threads()} threads); GAPT compress phase, {args.mbe_mode} MBE "
          f"P={gapt.gapt_config.patch_size} on {n_mbe} layers; {args.steps} interleaved steps each")
    print(f"median step: plain DeepSpeed {med['plain'] * 1e3:.1f} ms, GAPT {med['gapt'] * 1e3:.1f} ms")
    print(f"ratio GAPT/plain = {med['gapt'] / med['plain']:.4f}")
    print(f"last GAPT step: {gapt.last_step}; DeepSpeed skipped steps: {gapt.skipped_steps}")
    assert gapt.phase == 2 and gapt.last_step is not None


def measure_cost(engine, x: torch.Tensor, args: argparse.Namespace) -> None:
    """Interleave GAPT steps and alignment measurements (the monitor's own code path) on one engine."""
    from gapt_ds.alignment import AlignmentMonitor
    from gapt_ds.hooks import find_blocks

    monitor = AlignmentMonitor(engine.module, find_blocks(engine.module))
    one_forward = engine.zero_optimization_stage() < 3
    steps, measures = [], []
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        loss = engine(input_ids=x, labels=x).loss
        engine.backward(loss)
        engine.step()
        t1 = time.perf_counter()
        monitor.measure(lambda: engine._measurement_losses((), {"input_ids": x, "labels": x}), one_forward)
        t2 = time.perf_counter()
        if i >= args.warmup:
            steps.append(t1 - t0)
            measures.append(t2 - t1)
    step, meas = statistics.median(steps), statistics.median(measures)
    print(f"median GAPT step {step * 1e3:.1f} ms, median alignment measurement {meas * 1e3:.1f} ms "
          f"({meas / step:.2f} steps); overhead at every K steps = 1 + {meas / step:.2f}/K: "
          + ", ".join(f"K={k}: {1 + meas / step / k:.4f}" for k in (50, 100, 200)))


if __name__ == "__main__":
    main()
