#!/usr/bin/env bash
# LLaVA stage A (projector pretraining) on one node with the DeepSpeed launcher (ZeRO-2).
#
#   ENCODER=checkpoints/reasonclip-vit-l14-336 LLM=Qwen/Qwen3-1.7B train/launch_llava_pretrain.sh [--key=value ...]
#   RECIPE=train/llava_reasonclip_pretrain.yaml OUTPUT_DIR=checkpoints/llava-reasonclip-qwen3-1.7b-pretrain \
#     train/launch_llava_pretrain.sh      # the LLaVA-1.5-format recipe ReasonCLIP published (square, 576 tokens)
#
# The published global batch (256) is kept whatever the GPU count: gradient_accumulation_steps =
# GLOBAL_BATCH / (PER_DEVICE * NUM_GPUS). Extra --key=value arguments override the recipe.
set -euo pipefail
NUM_GPUS=${NUM_GPUS:-$(python -c "import torch; print(max(1, torch.cuda.device_count()))")}
RECIPE=${RECIPE:-train/llava_next_pretrain.yaml}
ENCODER=${ENCODER:-checkpoints/reasonclip-vit-l14-336}
LLM=${LLM:-Qwen/Qwen3-1.7B}
DATA=${DATA:-data/LLaVA-Pretrain}
OUTPUT_DIR=${OUTPUT_DIR:-checkpoints/llava-next-reasonclip-$(basename "$LLM")-pretrain}
GLOBAL_BATCH=${GLOBAL_BATCH:-256}
PER_DEVICE=${PER_DEVICE:-32}

# Fewer devices than the recipe assumes -> more accumulation; more devices -> smaller per-device batch.
DEVICES=$NUM_GPUS
source "$(dirname "$0")/split_global_batch.sh"

exec deepspeed --num_gpus "$NUM_GPUS" --module reasonclip_llava.mllm_train.train "$RECIPE" \
  --language_model="$LLM" \
  --vision_tower="$ENCODER" \
  --data_path="$DATA/blip_laion_cc_sbu_558k.json" \
  --image_folder="$DATA/images" \
  --per_device_train_batch_size="$PER_DEVICE" \
  --gradient_accumulation_steps="$ACCUM" \
  --output_dir="$OUTPUT_DIR" \
  "$@"
