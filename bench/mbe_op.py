"""Cost of patch MBE itself: forward+backward of `patch_mbe` on one (B, S, D) block output, next to a
LayerNorm forward+backward on the same tensor (a transformer block runs two of those per layer).

    OMP_NUM_THREADS=2 .venv/bin/python bench/mbe_op.py            # B=8 S=256 D=384, P=8
    .venv/bin/python bench/mbe_op.py --batch 8 --seq 1024 --dim 768   # GPT-2 124M widths (on a GPU if present)
"""

from __future__ import annotations

import argparse
import time

import torch

from gapt_ds.mbe import patch_mbe


def timed(fn, device: torch.device, reps: int) -> float:
    for _ in range(3):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--patch", type=int, default=8)
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--reps", type=int, default=50)
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    h = torch.randn(args.batch, args.seq, args.dim, device=device, dtype=dtype, requires_grad=True)

    def mbe() -> None:
        patch_mbe(h, args.patch).backward()

    def layer_norm() -> None:
        torch.nn.functional.layer_norm(h, (args.dim,)).sum().backward()

    t_mbe, t_ln = timed(mbe, device, args.reps), timed(layer_norm, device, args.reps)
    print(f"B={args.batch} S={args.seq} D={args.dim} P={args.patch} {args.dtype} on {device.type}: "
          f"patch MBE fwd+bwd {t_mbe * 1e3:.3f} ms, LayerNorm fwd+bwd {t_ln * 1e3:.3f} ms, ratio {t_mbe / t_ln:.2f}")


if __name__ == "__main__":
    main()
