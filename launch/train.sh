#!/usr/bin/env bash
# The main job: set up .venv, then train a small GPT-2 with GAPT on the CPU-scale arithmetic task (ID 1-2 digit
# operands, OOD 3-4, reversed fixed-width answers, one problem per sequence, answer-only loss; the
# `arithmetic-cpu` recipe's settings) through the deepspeed launcher, 2 ranks (CPU: one thread per rank; GPUs:
# one rank per GPU). Then the same run with CE only (same seed: same initialisation and problems), and a
# side-by-side of the final evaluations. STEPS (default 1000, the LR schedule's length too) keeps it short:
# the recipe's full 5000 steps learn the task to ~94% (`gapt-ds sweep arithmetic-cpu`, docs/results.md).
#   bash launch/train.sh                       # -> runs/main/ (GAPT) and runs/main-ce/ (CE only)
#   COMPARE=0 bash launch/train.sh             # GAPT run only
#   STEPS=5000 bash launch/train.sh            # the full recipe length
#   bash launch/train.sh --eval-every 100      # extra arguments go to `gapt-ds train` (both runs)
#   tensorboard --logdir runs                  # watch them
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
steps=${STEPS:-1000}
mkdir -p "$(dirname "$run_dir")"
write_config() {  # write_config ALGORITHM PATH: the recipe's config, this algorithm, the schedule over $steps
  python -c 'import json,sys; c=json.load(open(sys.argv[1])); c["gapt"]["algorithm"]=sys.argv[2]
c["scheduler"]["params"]["total_num_steps"]=int(sys.argv[3]); json.dump(c,open(sys.argv[4],"w"),indent=1)' \
    ds_configs/recipes/arithmetic_cpu.json "$1" "$steps" "$2"
}
train() {  # train RUN_DIR ALGORITHM_CONFIG [extra args]
  local dir=$1 cfg=$2; shift 2
  run_group deepspeed "${launcher_opts[@]}" --num_gpus "$ranks" --master_port "${MASTER_PORT:-29500}" --module gapt_ds.train \
    --deepspeed_config "$cfg" --data arithmetic --tokenizer char --model cpu --seq-len 24 \
    --arith-digits 1-2:3-4 --arith-reverse --arith-pad --arith-per-problem --arith-answer-loss --arith-eval 512 \
    --steps "$steps" --eval-every 250 --save-every 250 --run-dir "$dir" --cache-dir "$dir/../.token_cache" "$@"
}
fresh=(--overwrite)  # the demo replaces its previous run, unless asked to continue it
for arg in "$@"; do [ "$arg" = --resume ] && fresh=(); done
start=$SECONDS
write_config gapt "$run_dir.json"
train "$run_dir" "$run_dir.json" "${fresh[@]}" "$@"
if [ "${COMPARE:-1}" != 0 ]; then
  write_config ce "$run_dir-ce.json"
  train "$run_dir-ce" "$run_dir-ce.json" "${fresh[@]}" "$@"
fi
python - "$run_dir" "$((SECONDS - start))" <<'PY'
import json, sys, pathlib
run, seconds = pathlib.Path(sys.argv[1]), int(sys.argv[2])
rows = [json.loads(l) for l in open(run / "metrics.jsonl")]
steps = list({r["step"]: r for r in rows if "phase" in r}.values())
phases = "".join("MC"[r["phase"] - 1] for r in steps)
switches = sum(a != b for a, b in zip(phases, phases[1:]))
print(f"\nGAPT phases by step (M memorize, C compress), {switches} switches, "
      f"{phases.count('C')} of {len(phases)} steps compressing:\n{phases}")
runs = {"gapt": run, "ce": run.parent / (run.name + "-ce")}
final = {k: json.loads((p / "summary.json").read_text()) for k, p in runs.items() if (p / "summary.json").is_file()}
keys = ["id_answer_ce", "id_exact_match", "ood_answer_ce", "ood_exact_match", "val_mbe"]
print("\nfinal evaluation (answer-CE in nats on held-out problems; exact match = greedy answer right):")
print(f"{'':16}" + "".join(f"{k:>16}" for k in final))
for key in keys:
    print(f"{key:16}" + "".join(f"{final[k].get(key, float('nan')):16.4f}" for k in final))
print(f"(one seed: a single pair says little; `gapt-ds sweep` gives paired statistics over seeds)")
print(f"wall time {seconds} s. TensorBoard: tensorboard --logdir {run.parent}   checkpoints: {run / 'checkpoints'}")
PY
