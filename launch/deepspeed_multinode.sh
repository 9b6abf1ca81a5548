#!/usr/bin/env bash
# Multi-node training with the deepspeed launcher. Hostfile format: see launch/hostfile.example.
# pdsh/ssh form: run once, on the first host; DeepSpeed reaches every host by passwordless ssh.
#   HOSTFILE=launch/hostfile bash launch/deepspeed_multinode.sh --data 'hf:HuggingFaceFW/fineweb:sample-10BT' \
#       --tokenizer /data/gpt2_bpe --model 124m --seq-len 1024 --steps 5000 --run-dir /shared/runs/gpt2-gapt
# no-ssh form: run once on every node (e.g. from your scheduler) with that node's NODE_RANK (its line in the
# hostfile, from 0) and MASTER_ADDR = the first host:
#   NO_SSH=1 NODE_RANK=0 MASTER_ADDR=node-001 HOSTFILE=launch/hostfile bash launch/deepspeed_multinode.sh ...
# The run dir must be shared; the token cache need not be (each node then builds its own).
# pdsh form: the arguments go through a shell on every node, so gapt_ds.launch_args refuses $, backticks,
# backslashes, quotes, tabs and newlines in them and quotes globs (the no-ssh form passes them verbatim).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
hostfile=${HOSTFILE:-$root/launch/hostfile}
args=(--deepspeed_config "${DS_CONFIG:-$root/ds_configs/multi_node_zero2_bf16.json}" "$@")
source "$root/launch/process_group.sh"   # SIGTERM/SIGINT to this script reach every local rank
if [ -n "${NO_SSH:-}" ]; then
  run_group deepspeed --hostfile "$hostfile" --no_ssh --node_rank "${NODE_RANK:?set NODE_RANK}" \
    --master_addr "${MASTER_ADDR:?set MASTER_ADDR}" --master_port "${MASTER_PORT:-29500}" \
    --module gapt_ds.train "${args[@]}"
  exit
fi
py=${PYTHON:-$(dirname "$(command -v deepspeed)")/python}  # the environment deepspeed runs in
safe=$("$py" -m gapt_ds.launch_args "${args[@]}")  # exits 2, naming the problems
mapfile -t args <<< "$safe"
run_group deepspeed --hostfile "$hostfile" ${MASTER_ADDR:+--master_addr "$MASTER_ADDR"} \
  --master_port "${MASTER_PORT:-29500}" --module gapt_ds.train "${args[@]}"
