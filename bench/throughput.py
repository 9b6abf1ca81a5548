"""Training throughput of `gapt-ds train`: tokens/s per rank and MFU, CE-only vs GAPT (compression phase).

Each arm is a real `gapt-ds train` run through the deepspeed launcher; tokens/s is the median of the
per-step values in metrics.jsonl after warm-up. Model FLOPs per token = 6·N + 12·L·D·S (N: non-embedding
parameters; attention term from PaLM's MFU definition); GAPT's MBE work is not counted as model FLOPs.
Peak: on CUDA the dense bf16 rate of the GPU (--peak-tflops to override); on CPU the fp32 matmul rate
measured here with all cores, so CPU "MFU" means "fraction of this machine's measured matmul rate".

    DS_ACCELERATOR=cpu .venv/bin/python bench/throughput.py                       # tiny CPU config, 2 ranks
    .venv/bin/python bench/throughput.py --model 124m --seq-len 1024 --ranks 1 \\
        --config ds_configs/single_node_zero1_bf16.json --data 'corpus/*.txt' --tokenizer gpt2_bpe/   # one GPU
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
GPU_PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def measured_cpu_peak_tflops(n: int = 1024, reps: int = 20) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12


def peak_tflops(override: float | None) -> tuple[float, str]:
    if override:
        return override, "given"
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        for key, value in GPU_PEAK_BF16_TFLOPS.items():
            if key in name:
                return value, f"{name} dense bf16"
        raise SystemExit(f"unknown GPU {name!r}: pass --peak-tflops")
    return measured_cpu_peak_tflops(), "measured CPU fp32 matmul"


def flops_per_token(model_preset: str, seq_len: int, vocab: int) -> float:
    from gapt_ds.models import build_gpt2, gpt2_config

    cfg = gpt2_config(model_preset, vocab_size=vocab, seq_len=seq_len)
    with torch.device("meta"):
        model = build_gpt2(cfg)
    n = sum(p.numel() for name, p in model.named_parameters() if "wte" not in name and "wpe" not in name)
    return 6 * n + 12 * cfg.n_layer * cfg.n_embd * seq_len


def run_arm(args, algorithm: str, workdir: Path) -> float:
    cfg = json.loads(Path(args.config).read_text())
    cfg = copy.deepcopy(cfg)
    cfg["gapt"] = {**cfg.get("gapt", {}), "algorithm": algorithm, "phase": "compress"}
    cfg.pop("scheduler", None)
    config = workdir / f"{algorithm}.json"
    config.write_text(json.dumps(cfg))
    cmd = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", str(args.ranks), "--module", "gapt_ds.train",
           "--deepspeed_config", str(config), "--data", args.data, "--tokenizer", args.tokenizer, "--model", args.model,
           "--seq-len", str(args.seq_len), "--steps", str(args.steps), "--eval-every", "0", "--arith-eval", "0",
           "--eval-batches", "1", "--save-every", "0", "--run-dir", str(workdir / algorithm), "--no-progress",
           "--cache-dir", str(workdir / "cache")]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    done = subprocess.run(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if done.returncode:
        sys.exit(f"{algorithm} arm failed (exit {done.returncode}); the run's last output:\n{done.stdout[-4000:]}")
    rows = [json.loads(line) for line in (workdir / algorithm / "metrics.jsonl").read_text().splitlines()]
    rates = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r][args.warmup :]
    return statistics.median(rates)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=str(ROOT / "ds_configs" / "cpu_default.json"))
    p.add_argument("--model", default="cpu")
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--data", default="arithmetic")
    p.add_argument("--tokenizer", default="char")
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--peak-tflops", type=float, default=None, help="device peak (per rank's device)")
    args = p.parse_args()
    from gapt_ds.data.tokenizers import load_tokenizer

    vocab = load_tokenizer(args.tokenizer).vocab_size
    fpt = flops_per_token(args.model, args.seq_len, vocab)
    peak, peak_kind = peak_tflops(args.peak_tflops)
    devices = args.ranks if torch.cuda.is_available() else 1  # CPU ranks share one measured machine peak
    with tempfile.TemporaryDirectory() as tmp:
        result = {arm: run_arm(args, arm, Path(tmp)) for arm in ("ce", "gapt")}
    print(f"model {args.model} S={args.seq_len} vocab={vocab}, {args.ranks} ranks, {fpt / 1e6:.2f} MFLOP/token; "
          f"peak {peak:.3f} TFLOP/s ({peak_kind}) x {devices}")
    for arm, tok_s in result.items():
        mfu = tok_s * fpt / (peak * 1e12 * devices)
        print(f"{arm:5s} {tok_s:12,.0f} tokens/s total  {tok_s / args.ranks:12,.0f} per rank  MFU {100 * mfu:6.2f}%")
    print(f"GAPT/CE throughput ratio: {result['gapt'] / result['ce']:.4f}")


if __name__ == "__main__":
    main()
