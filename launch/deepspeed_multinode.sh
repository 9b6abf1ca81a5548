#!/usr/bin/env bash
# Multi-node training with the deepspeed launcher (pdsh/ssh to every host of the hostfile).
#   HOSTFILE=launch/hostfile bash launch/deepspeed_multinode.sh --data 'hf:HuggingFaceFW/fineweb:sample-10BT' \
#       --tokenizer /data/gpt2_bpe --model 124m --seq-len 1024 --steps 5000 --run-dir /shared/runs/gpt2-gapt
# Hostfile format: see launch/hostfile.example. Run it on the first host; the run dir must be shared.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
exec deepspeed --hostfile "${HOSTFILE:-$root/launch/hostfile}" --master_port "${MASTER_PORT:-29500}" \
  --module gapt_ds.train --deepspeed_config "${DS_CONFIG:-$root/ds_configs/multi_node_zero2_bf16.json}" "$@"
