#!/usr/bin/env bash
# GPU check in one command: MFU of `gapt-ds train` (bench/throughput.py), the GAPT/plain step ratio at GPT-2 124M
# widths (bench/step_overhead.py), the fp16 non-finite skip path (bench/fp16_skip.py), the memory saved by activation
# checkpointing (bench/memory.py) and the compiled/eager step ratio (bench/compile.py). Run it from the repo root on
# a machine with a CUDA GPU; without one it says so and exits 0.
#   bash bench/gpu_check.sh                       # ~5 min on one H100 for 1-3, then 4-5 (compilation: minutes)
#   GPU_CHECK_DATA='corpus/*.txt' GPU_CHECK_TOKENIZER=/data/gpt2_bpe bash bench/gpu_check.sh   # real text for MFU
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
py=${PYTHON:-$root/.venv/bin/python}
[ -x "$py" ] || py=python3
if ! "$py" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1; then
  echo "gpu_check: skipped: $py sees no CUDA GPU through torch (nothing measured)"
  exit 0
fi
cd "$root"
unset DS_ACCELERATOR  # GPU nodes auto-detect cuda/nccl
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
echo "== 1/5 MFU: gapt-ds train, 124m, S=1024, bf16, 1 GPU, CE-only vs GAPT (compression phase)"
"$py" bench/throughput.py --model 124m --seq-len 1024 --ranks 1 --steps 40 --warmup 10 \
  --config ds_configs/single_node_zero1_bf16.json --data "${GPU_CHECK_DATA:-arithmetic}" \
  --tokenizer "${GPU_CHECK_TOKENIZER:-char}"
echo "== 2/5 GAPT/plain step ratio (and A/A noise floor): L=12 D=768 S=1024 B=8 bf16, patch MBE"
"$py" bench/step_overhead.py --layers 12 --dim 768 --heads 12 --seq 1024 --batch 8 --dtype bf16 --steps 30
"$py" bench/step_overhead.py --layers 12 --dim 768 --heads 12 --seq 1024 --batch 8 --dtype bf16 --steps 30 --aa
echo "== 3/5 fp16 skip path (ZeRO-1 and ZeRO-3)"
"$py" bench/fp16_skip.py --stage 1
"$py" bench/fp16_skip.py --stage 3
echo "== 4/5 peak memory without/with activation checkpointing: 124m, S=1024, B=8, bf16, compression phase"
"$py" bench/memory.py --device cuda --model 124m --seq-len 1024 --batch 8 --dtype bf16 --steps 5
echo "== 5/5 step time eager vs --compile: 124m, S=1024, B=8, bf16, compression phase"
"$py" bench/compile.py --device cuda --model 124m --seq-len 1024 --batch 8 --dtype bf16 --warmup 5 --steps 30
