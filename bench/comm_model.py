"""Per-step cost of gapt-ds's collectives at GPT-2 scale, from the ring all-reduce model (docs/scaling.md).

Not a measurement: a model with stated assumptions, so the numbers in docs/scaling.md can be re-derived and
re-run with other hardware numbers. Ring costs for W ranks and M bytes on a bus bandwidth B, per-hop latency a:
    all-reduce      2(W-1)/W * M/B + 2(W-1) a      (tree algorithms: ~2 log2(W) a instead of 2(W-1) a)
    reduce-scatter   (W-1)/W * M/B +  (W-1) a

    python bench/comm_model.py                                  # the table of docs/scaling.md
    python bench/comm_model.py --inter-gbs 25 --gas 8 --mfu 0.35
"""

from __future__ import annotations

import argparse
import math

MODELS = {"124M": (12, 768), "355M": (24, 1024), "774M": (36, 1280), "1.5B": (48, 1600)}  # (layers, width)
VOCAB, CTX = 50257, 1024


def params(layers: int, d: int) -> int:
    """GPT-2 parameter count (tied LM head)."""
    per_block = 12 * d * d + 13 * d
    return layers * per_block + (VOCAB + CTX) * d + 2 * d


def allreduce_s(nbytes: float, w: int, bw: float, lat: float, tree: bool) -> float:
    hops = 2 * math.log2(w) if tree else 2 * (w - 1)
    return 2 * (w - 1) / w * nbytes / bw + hops * lat


def reduce_scatter_s(nbytes: float, w: int, bw: float, lat: float) -> float:
    return (w - 1) / w * nbytes / bw + (w - 1) * lat


def row(name: str, w: int, a: argparse.Namespace) -> dict:
    layers, d = MODELS[name]
    n = params(layers, d)
    selected = layers - 2  # "inner" layers
    intra = w <= a.gpus_per_node
    bw = (a.intra_gbs if intra else a.inter_gbs) * 1e9
    lat = (a.intra_lat_us if intra else a.inter_lat_us) * 1e-6
    tokens = a.micro * CTX  # per rank and micro-batch
    flops = (6 * n + 12 * layers * d * CTX) * tokens * a.gas  # per rank and optimizer step
    compute = flops / (a.peak_tflops * 1e12 * a.mfu)
    grad = allreduce_s(2 * n, w, bw, lat, tree=False)  # bf16 gradients, ring (overlaps with backward)
    step_ar = allreduce_s(8 * (selected + 4), w, bw, lat, tree=a.tree)  # float64 [CE, MBE_l.., counts]
    gram_bytes = 4 * d * d
    gram = a.gas * selected * allreduce_s(gram_bytes, w, bw, lat, tree=a.tree)  # blocking, in forward
    gram_flops = a.gas * selected * 6 * tokens * d * d  # Gram + surrogate forward/backward, per rank
    align_comm = reduce_scatter_s(2 * 4 * n, w, bw, lat * math.ceil(n / 2**24))  # fp32, buckets of 2^24
    align = (2.1 * compute + align_comm) / a.align_every  # ~2.1 steps of compute measured on CPU
    return dict(model=name, W=w, N=n, step_ms=1e3 * compute, grad_ms=1e3 * grad, step_ar_us=1e6 * step_ar,
                gram_ms=1e3 * gram, gram_compute_pct=100 * gram_flops / flops * a.mfu / a.gram_mfu,
                gram_pct=100 * (gram + gram_flops / (a.peak_tflops * 1e12 * a.gram_mfu)) / compute,
                align_pct=100 * align / compute, step_ar_pct=100 * step_ar / compute)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--intra-gbs", type=float, default=360.0, help="NVLink all-reduce bus bandwidth per GPU, GB/s")
    p.add_argument("--inter-gbs", type=float, default=40.0,
                   help="inter-node bus bandwidth per GPU, GB/s (400 Gb/s NIC)")
    p.add_argument("--intra-lat-us", type=float, default=5.0)
    p.add_argument("--inter-lat-us", type=float, default=10.0)
    p.add_argument("--tree", action=argparse.BooleanOptionalAction, default=False,
                   help="tree latency for the small collectives (NCCL's choice at scale); default: ring")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="H100 dense bf16")
    p.add_argument("--mfu", type=float, default=0.40)
    p.add_argument("--gram-mfu", type=float, default=0.40, help="matmul efficiency of the D x D Gram work")
    p.add_argument("--micro", type=int, default=16, help="sequences of 1024 tokens per rank and micro-batch")
    p.add_argument("--gas", type=int, default=4, help="micro-batches per optimizer step")
    p.add_argument("--align-every", type=int, default=200)
    a = p.parse_args()
    print(f"assumptions: {vars(a)}")
    print("| model | W | step compute | grad all-reduce (overlapped) | step all-reduce | global: Gram all-reduces "
          "| global: total vs step | monitor (k) vs step |")
    print("|---|---|---|---|---|---|---|---|")
    for name in MODELS:
        for w in (8, 64, 512):
            r = row(name, w, a)
            print(f"| {name} | {w} | {r['step_ms']:.0f} ms | {r['grad_ms']:.0f} ms | {r['step_ar_us']:.0f} µs "
                  f"({r['step_ar_pct']:.3f}%) | {r['gram_ms']:.1f} ms | +{r['gram_pct']:.1f}% | "
                  f"+{r['align_pct']:.2f}% |")


if __name__ == "__main__":
    main()
