#!/usr/bin/env bash
# Single-node pretraining for any ReasonCLIP stage: one process per GPU via torchrun.
#
#   train/launch_pretrain.sh train/stage1_b32.yaml [--section.key=value ...]
#   NPROC=8 train/launch_pretrain.sh train/stage2_b32.yaml --runtime.deepspeed=train/ds_zero2_pretrain.json
#   train/launch_pretrain.sh train/stage1_b32.yaml --runtime.resume_from=latest     # after a crash
#
# NPROC defaults to the number of visible GPUs (1 on a CPU-only machine). `accelerate launch` or the
# `deepspeed` launcher work too: the trainer reads the usual RANK / WORLD_SIZE / LOCAL_RANK variables.
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: $0 CONFIG.yaml [--key=value ...]" >&2
  exit 2
fi
config=$1; shift
if [ -z "${NPROC:-}" ]; then
  NPROC=$(python -c "import torch; print(max(1, torch.cuda.device_count()))")
fi
exec torchrun --standalone --nproc_per_node="$NPROC" -m reasonclip_llava.pretrain "$config" "$@"
