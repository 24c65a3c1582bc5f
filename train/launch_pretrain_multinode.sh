#!/usr/bin/env bash
# Multi-node pretraining (e.g. the published stage 1: 32 GPUs = 4 nodes x 8). Run the same command on
# every node; each node needs its NODE_RANK. Under SLURM the variables are read from the allocation.
#
#   NNODES=4 NODE_RANK=0 MASTER_ADDR=node0 GPUS_PER_NODE=8 \
#     train/launch_pretrain_multinode.sh train/stage1_l14_336.yaml --runtime.deepspeed=train/ds_zero2_pretrain.json
#   srun --nodes=4 --ntasks-per-node=1 train/launch_pretrain_multinode.sh train/stage1_l14_336.yaml
#
# The contrastive losses all-gather features across every rank (global batch = nodes x GPUs x batch),
# and checkpoints go to runtime.output_dir, which must be on a filesystem all nodes share.
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: $0 CONFIG.yaml [--key=value ...]" >&2
  exit 2
fi
config=$1; shift
NNODES=${NNODES:-${SLURM_NNODES:-1}}
NODE_RANK=${NODE_RANK:-${SLURM_NODEID:-0}}
GPUS_PER_NODE=${GPUS_PER_NODE:-$(python -c "import torch; print(max(1, torch.cuda.device_count()))")}
if [ -z "${MASTER_ADDR:-}" ] && [ -n "${SLURM_JOB_NODELIST:-}" ]; then
  MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
fi
MASTER_ADDR=${MASTER_ADDR:?set MASTER_ADDR to the address of node 0}
MASTER_PORT=${MASTER_PORT:-29500}
exec torchrun \
  --nnodes="$NNODES" --node_rank="$NODE_RANK" --nproc_per_node="$GPUS_PER_NODE" \
  --rdzv_backend=c10d --rdzv_endpoint="$MASTER_ADDR:$MASTER_PORT" \
  -m reasonclip_llava.pretrain "$config" "$@"
