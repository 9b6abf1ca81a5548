#!/usr/bin/env bash
# Multi-node training with torchrun: run this once on every node with its NODE_RANK.
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node-001 GPUS_PER_NODE=8 bash launch/torchrun_multinode.sh --model 124m ...
# Loopback rehearsal on one machine (what tests/test_train.py does): two shells, NODE_RANK=0 and 1,
# with MASTER_ADDR=127.0.0.1 GPUS_PER_NODE=1 (add DS_ACCELERATOR=cpu without GPUs).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
NNODES=${NNODES:-${SLURM_NNODES:-}} NODE_RANK=${NODE_RANK:-${SLURM_NODEID:-}}  # Slurm provides both
exec torchrun --nnodes "${NNODES:?set NNODES}" --node_rank "${NODE_RANK:?set NODE_RANK}" \
  --nproc_per_node "${GPUS_PER_NODE:-8}" --master_addr "${MASTER_ADDR:?set MASTER_ADDR}" \
  --master_port "${MASTER_PORT:-29500}" -m gapt_ds.train \
  --deepspeed_config "${DS_CONFIG:-$root/ds_configs/multi_node_zero2_bf16.json}" "$@"
