"""Step time of GAPT training, eager vs `--compile` (DeepSpeed's ``engine.compile()``, inductor).

One process, one rank: two real GAPT engines (ZeRO-0, AdamW, compression phase: patch MBE, P=8, on the inner
layers) on identical model copies train on the same random tokens, their steps interleaved after
``--warmup`` steps each (the compiled engine's first step includes compilation, reported separately).
Prints the median steps, the ratio compiled/eager, and the largest loss difference between the two.

    python bench/compile.py                                     # auto device: 124m, S=1024, B=1, fp32
    python bench/compile.py --device cuda --batch 8 --dtype bf16 --steps 30
    python bench/compile.py --model cpu --seq-len 256 --batch 8 # a small shape (CPU)
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH), str(BENCH.parent)]  # bench/ is not a package; gapt_ds without installing
from memory import engine_config, free_port, resolve_device, shape_parser, train_step  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = shape_parser(__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=4, help="timed steps per engine")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per engine (compilation happens here)")
    return p.parse_args(argv)


def main() -> None:
    import os

    args = parse_args()
    args.device = resolve_device(args.device)
    if args.device == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    elif os.environ.get("DS_ACCELERATOR") == "cpu":
        raise SystemExit("--device cuda with DS_ACCELERATOR=cpu: unset it")
    for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1")):
        os.environ.setdefault(key, value)
    from gapt_ds import runtime

    with runtime.process_group(master_port=str(free_port())):
        bench(args)


def bench(args: argparse.Namespace) -> None:
    import torch

    import gapt_ds
    from gapt_ds.models import build_gpt2, gpt2_config
    from gapt_ds.train import check_compile_toolchain

    model = build_gpt2(gpt2_config(args.model, seq_len=args.seq_len))
    cfg = engine_config(args)
    check_compile_toolchain()
    engines = {}
    for name, m in (("eager", model), ("compiled", copy.deepcopy(model))):
        engines[name], *_ = gapt_ds.initialize(model=m, model_parameters=m.parameters(), config=copy.deepcopy(cfg))
    engines["compiled"].compile()
    cuda = engines["eager"].device.type == "cuda"
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, model.config.vocab_size, (args.batch, args.seq_len), generator=gen)
               for _ in range(args.warmup + args.steps)]

    def step(engine, x) -> tuple[float, float]:
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = train_step(engine, x)
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t0, loss.item()

    times = {"eager": [], "compiled": []}
    losses = {"eager": [], "compiled": []}
    first = {}
    for i, batch in enumerate(batches):
        order = ["eager", "compiled"] if i % 2 == 0 else ["compiled", "eager"]
        for name in order:
            t, loss = step(engines[name], batch.to(engines[name].device))
            losses[name].append(loss)
            if i == 0:
                first[name] = t
            if i >= args.warmup:
                times[name].append(t)
    med = {k: statistics.median(v) for k, v in times.items()}
    dloss = max(abs(a - b) for a, b in zip(losses["eager"], losses["compiled"]))
    print(f"model {args.model}, S={args.seq_len}, micro-batch {args.batch}, {args.dtype}, ZeRO-0, 1 rank, "
          f"{args.device} ({torch.get_num_threads()} threads), GAPT compression phase; "
          f"{args.warmup} warm-up + {args.steps} timed interleaved steps each, torch {torch.__version__}")
    print(f"first step: eager {first['eager']:.2f} s, compiled {first['compiled']:.2f} s (includes compilation)")
    print(f"median step: eager {med['eager'] * 1e3:.1f} ms, compiled {med['compiled'] * 1e3:.1f} ms; "
          f"ratio compiled/eager = {med['compiled'] / med['eager']:.3f}")
    print(f"largest |loss difference| over {len(batches)} steps: {dloss:.2e} "
          f"(eager {', '.join(f'{x:.5f}' for x in losses['eager'])})")
    for engine in engines.values():
        engine.destroy()


if __name__ == "__main__":
    main()
