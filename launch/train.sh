#!/usr/bin/env bash
# The main job: set up .venv, then train a small GPT-2 with GAPT on the built-in arithmetic task
# through the deepspeed launcher, 2 ranks (CPU: a few minutes on 2 cores; GPUs: one rank per GPU).
#   bash launch/train.sh                       # -> runs/main/{tensorboard,checkpoints,metrics.jsonl}
#   bash launch/train.sh --steps 1000          # extra arguments go to `gapt-ds train`
#   tensorboard --logdir runs/main             # watch it
# SIGTERM/SIGINT (Ctrl-C) to this script reach every rank: they finish the step, save, exit non-zero.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=$(bash "$root/launch/setup.sh" | tail -n 1)
export PATH="$venv/bin:$PATH" PYTHONUNBUFFERED=1
cd "$root"
run_dir=${RUN_DIR:-runs/main}
launcher_opts=()
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  ranks=$(nvidia-smi -L | wc -l)
else  # CPU-only: 2 ranks on gloo, one thread each (the launcher does not set it)
  export DS_ACCELERATOR=cpu OMP_NUM_THREADS=1
  ranks=2
  launcher_opts=(--log_level warning)  # no launcher INFO lines such as CUDA_VISIBLE_DEVICES=0,1 on a CPU machine
fi
source "$root/launch/process_group.sh"
run_group deepspeed "${launcher_opts[@]}" --num_gpus "$ranks" --module gapt_ds.train \
  --deepspeed_config ds_configs/cpu_default.json --data arithmetic --tokenizer char --model cpu \
  --seq-len 64 --steps 400 --eval-every 100 --save-every 200 --run-dir "$run_dir" --cache-dir "$run_dir/../.token_cache" "$@"
python - "$run_dir" <<'PY'
import json, sys, pathlib
run = pathlib.Path(sys.argv[1])
rows = [json.loads(l) for l in open(run / "metrics.jsonl")]
steps = [r for r in rows if "phase" in r]
phases = "".join("MC"[r["phase"] - 1] for r in steps)
switches = sum(a != b for a, b in zip(phases, phases[1:]))
print(f"\nphases by step (M memorize, C compress), {switches} switches:\n{phases}")
print("final evaluation:", json.dumps(json.loads((run / "summary.json").read_text())))
print(f"TensorBoard: tensorboard --logdir {run}   checkpoints: {run / 'checkpoints'}")
PY
