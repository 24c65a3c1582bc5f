#!/usr/bin/env bash
# LLaVA-NeXT training across nodes. Run the same command on every node (torchrun), or once with a
# DeepSpeed hostfile.
#
#   torchrun (SLURM, k8s, plain ssh): on node i of N
#     NNODES=4 NODE_RANK=i MASTER_ADDR=node0 MASTER_PORT=29500 train/launch_llava_multinode.sh finetune [--key=value ...]
#   DeepSpeed hostfile ("node0 slots=8" per line; passwordless ssh between nodes), from node0 only:
#     HOSTFILE=hostfile MASTER_ADDR=node0 train/launch_llava_multinode.sh pretrain [--key=value ...]
#
# STAGE: pretrain (ZeRO-2, lr 1e-3, global 256) | finetune (ZeRO-3, LM 1e-5, tower 2e-6, global 128)
#        | lora (ZeRO-3, r=128 alpha=256 lr 2e-4, projector 2e-5, global 128).
# The global batch is kept: gradient_accumulation_steps = GLOBAL_BATCH / (PER_DEVICE * world size).
set -euo pipefail
STAGE=${1:-}
case "$STAGE" in
  pretrain) RECIPE=${RECIPE:-train/llava_next_pretrain.yaml}; GLOBAL_BATCH=${GLOBAL_BATCH:-256}; PER_DEVICE=${PER_DEVICE:-32} ;;
  finetune) RECIPE=${RECIPE:-train/llava_next_finetune.yaml}; GLOBAL_BATCH=${GLOBAL_BATCH:-128}; PER_DEVICE=${PER_DEVICE:-4} ;;
  lora) RECIPE=${RECIPE:-train/llava_next_finetune_lora.yaml}; GLOBAL_BATCH=${GLOBAL_BATCH:-128}; PER_DEVICE=${PER_DEVICE:-16} ;;
  *) echo "usage: $0 pretrain|finetune|lora [--key=value ...]" >&2; exit 2 ;;
esac
shift
GPUS_PER_NODE=${GPUS_PER_NODE:-$(python -c "import torch; print(max(1, torch.cuda.device_count()))")}
MASTER_ADDR=${MASTER_ADDR:?set MASTER_ADDR to the address of node 0}
MASTER_PORT=${MASTER_PORT:-29500}

if [ -n "${HOSTFILE:-}" ]; then
  [ -f "$HOSTFILE" ] || { echo "HOSTFILE not found: $HOSTFILE" >&2; exit 2; }
  NNODES=$(grep -v '^[[:space:]]*#' "$HOSTFILE" | grep -c '[^[:space:]]')
else
  NNODES=${NNODES:?set NNODES (and NODE_RANK) or HOSTFILE}
  NODE_RANK=${NODE_RANK:?set NODE_RANK (0..NNODES-1)}
fi
WORLD=$(( NNODES * GPUS_PER_NODE ))
# Fewer devices than the recipe assumes -> more accumulation; more devices -> smaller per-device batch.
DEVICES=$WORLD
source "$(dirname "$0")/split_global_batch.sh"
ARGS=("$RECIPE" --per_device_train_batch_size="$PER_DEVICE" --gradient_accumulation_steps="$ACCUM" "$@")

if [ -n "${HOSTFILE:-}" ]; then
  exec deepspeed --hostfile "$HOSTFILE" --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
    --module reasonclip_llava.mllm_train.train "${ARGS[@]}"
else
  exec torchrun --nnodes "$NNODES" --node_rank "$NODE_RANK" --nproc_per_node "$GPUS_PER_NODE" \
    --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
    -m reasonclip_llava.mllm_train.train "${ARGS[@]}"
fi
