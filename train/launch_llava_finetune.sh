#!/usr/bin/env bash
# LLaVA-NeXT stage B (visual instruction tuning) on one node with the DeepSpeed launcher (ZeRO-3).
#
#   train/launch_llava_finetune.sh [full|lora|reasonclip] [--key=value ...]
#   PRETRAINED=checkpoints/...-pretrain DATA_JSON=... IMAGE_FOLDER=... train/launch_llava_finetune.sh full
#
#   full: LM lr 1e-5 + vision tower unfrozen at 2e-6 (ReasonCLIP's LLaVA-NeXT recipe)
#   lora: LoRA r=128 alpha=256 lr 2e-4, projector lr 2e-5 (LLaVA-1.5 LoRA); merge with `reasonclip llava-merge`
#   reasonclip: the recipe ReasonCLIP published: LLaVA-1.5 format (pad + flat, 576 tokens), LM 1e-5,
#         tower 2e-6, global batch 64 (train/llava_reasonclip_finetune.yaml)
# Global batch 128 (reasonclip: 64) whatever the GPU count (gradient accumulation fills the gap).
# Memory-bound? ZERO=train/zero3_offload.json (optimizer + parameters in CPU RAM, DeepSpeed CPU Adam).
set -euo pipefail
MODE=full
if [ $# -gt 0 ] && [[ "$1" != --* ]]; then MODE=$1; shift; fi
case "$MODE" in
  full) RECIPE=${RECIPE:-train/llava_next_finetune.yaml}; PER_DEVICE=${PER_DEVICE:-4} ;;
  lora) RECIPE=${RECIPE:-train/llava_next_finetune_lora.yaml}; PER_DEVICE=${PER_DEVICE:-16} ;;
  reasonclip) RECIPE=${RECIPE:-train/llava_reasonclip_finetune.yaml}; PER_DEVICE=${PER_DEVICE:-2}
              GLOBAL_BATCH=${GLOBAL_BATCH:-64}
              PRETRAINED=${PRETRAINED:-checkpoints/llava-reasonclip-qwen3-1.7b-pretrain}
              DATA_JSON=${DATA_JSON:-data/llava-sft-data/llava_next_raw_format_processed.json}
              IMAGE_FOLDER=${IMAGE_FOLDER:-data/llava-sft-data/images}
              OUTPUT_DIR=${OUTPUT_DIR:-checkpoints/llava-reasonclip-qwen3-1.7b} ;;
  *) echo "usage: $0 [full|lora|reasonclip] [--key=value ...]" >&2; exit 2 ;;
esac
NUM_GPUS=${NUM_GPUS:-$(python -c "import torch; print(max(1, torch.cuda.device_count()))")}
PRETRAINED=${PRETRAINED:-checkpoints/llava-next-reasonclip-qwen3-1.7b-pretrain}
DATA_JSON=${DATA_JSON:-data/LLaVA-NeXT-Data/llava_next_data.json}
IMAGE_FOLDER=${IMAGE_FOLDER:-data/LLaVA-NeXT-Data/images}
OUTPUT_DIR=${OUTPUT_DIR:-checkpoints/llava-next-reasonclip-qwen3-1.7b-$MODE}
ZERO=${ZERO:-train/zero3.json}
GLOBAL_BATCH=${GLOBAL_BATCH:-128}

# Fewer devices than the recipe assumes -> more accumulation; more devices -> smaller per-device batch.
DEVICES=$NUM_GPUS
source "$(dirname "$0")/split_global_batch.sh"

exec deepspeed --num_gpus "$NUM_GPUS" --module reasonclip_llava.mllm_train.train "$RECIPE" \
  --model_name_or_path="$PRETRAINED" \
  --data_path="$DATA_JSON" \
  --image_folder="$IMAGE_FOLDER" \
  --per_device_train_batch_size="$PER_DEVICE" \
  --gradient_accumulation_steps="$ACCUM" \
  --deepspeed="$ZERO" \
  --output_dir="$OUTPUT_DIR" \
  "$@"
