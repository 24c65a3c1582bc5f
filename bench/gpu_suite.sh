#!/usr/bin/env bash
# The speed rows of bench/RESULTS.md in one go on one Hopper GPU (H100/H200), one log per row, each row under
# its own timeout (the timeouts add up to 10 minutes; the rows' expected times are below them):
#   bf16, CLIP ViT-L/14-336 batch 64 against open_clip_train at its best, ours eager / regional / step / fp8 x compile,
#   the stage-1 and READ step ratios (compiled), SigLIP So400M/14-384 rows, 200-step loss parity + verify, and
#   padded vs length-grouped vs packed LLaVA batches.
#   bash bench/gpu_suite.sh [LOG_DIR]                       # default bench/logs
#   ONLY="vs_open_clip_l14 loss_parity_l14" bash bench/gpu_suite.sh   # a subset, by row name
#   EXTRA=1 bash bench/gpu_suite.sh                         # also the parity rows of the earlier suite (+~2 min)
# Needs this package, open-clip-torch (+ torchvision, timm, ftfy), torchao (FP8 rows) and webdataset importable;
# nothing is downloaded. A bare GPU image: `bash bench/gpu_wheels.sh DIR` here fetches the missing wheels to carry.
set -uo pipefail
LOG_DIR=${1:-bench/logs}
mkdir -p "$LOG_DIR"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-python3}
SUMMARY="$LOG_DIR/summary.log"
: > "$SUMMARY"
START=$SECONDS
row() {  # name, timeout in seconds, then the command
    local name=$1 limit=$2; shift 2
    if [[ -n "${ONLY:-}" && " $ONLY " != *" $name "* ]]; then return; fi
    echo "=== $name (timeout ${limit}s): $*"
    local begin=$SECONDS
    timeout -k 10 "$limit" "$@" 2>&1 | grep --line-buffered -v -E "Loading weights|Writing model shards|it/s\]|Failed to load .*torchao|Enum subclass" \
        | tee "$LOG_DIR/$name.log"
    local code=${PIPESTATUS[0]}
    echo "$name: exit $code$([[ $code == 124 ]] && echo ' (timed out)'), $((SECONDS - begin)) s" | tee -a "$SUMMARY"
}
L14="--size l14-336 --device cuda --precision bf16"
SO400M="--size so400m --layers 27 --batch 32 --caption-tokens 64 --device cuda --precision bf16 --sequential --repeats 8 --variants plain,stage1"

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  $PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
  $PY -c "import open_clip; print('open-clip-torch', open_clip.__version__)" 2>&1 | tail -1
  $PY -c "import torchao; print('torchao', torchao.__version__)" 2>&1 | tail -1; } | tee "$LOG_DIR/device.log"

# ~200 s: open_clip eager + its --torchcompile, ours eager (77 / dynamic padding), regional, step, fp8 x step
# (most of it compiling: open_clip's whole model, our layers, our whole step twice).
row vs_open_clip_l14 240 $PY bench/bench_vs_open_clip.py $L14 --batch 64 --steps 8 --warmup 4 --rounds 1 --compile --fp8 tensorwise --attention auto
# ~50 s: stage-1 / plain and READ / hard negatives, real T5-v1.1-large-shaped decoder, compiled layers
row pretrain_steps_l14 60 $PY bench/bench_pretrain_steps.py $L14 --layers 24 --t5-layers 24 --batch 32 --sequential --repeats 8 \
    --compile-mode regional --attention auto
# ~30 s + ~45 s: SigLIP So400M/14-384 (sigmoid loss; 64-token captions), eager, then regional with fp8 tensorwise
row so400m_eager 40 $PY bench/bench_pretrain_steps.py $SO400M --attention auto
row so400m_fp8_regional 50 $PY bench/bench_pretrain_steps.py $SO400M --attention auto --compile-mode regional --fp8 tensorwise
# ~80 s: 200 steps each of bf16 eager, step-compiled and fp8 + step on the same 8 batches (ViT-L/14-336 widths, 6 layers)
row loss_parity_l14 90 $PY bench/bench_loss_parity.py --size l14-336 --layers 6 --batch 32 --steps 200 --device cuda --precision bf16 \
    --modes eager,step,fp8-tensorwise-step

# ~60 s: padded / length-grouped / packed LLaVA batches on LLaVA-665K-shaped lengths (computed tokens, then tokens/s of a
# 1024 x 8 Qwen2-shaped LM, bf16, flash_attention_2 when flash-attn is installed, else SDPA); the pre-pass is a CPU row
row llava_packing 120 $PY bench/bench_llava_packing.py --device cuda --dtype bfloat16 --hidden 1024 --layers 8 --scale 1 \
    --batch 16 --steps 8 --repeats 5 --threads 4 --prepass-rows 0

if [[ -n "${EXTRA:-}" ]]; then
    row tower_parity 60 $PY bench/bench_tower_parity.py --size l14-336 --device cuda --dtype bfloat16 --batch 32 --repeats 50
    row llava_parity 90 $PY bench/bench_llava_parity.py --device cuda --repeats 100 --generate-repeats 20 --real-size-latency
fi
echo "total $((SECONDS - START)) s" | tee -a "$SUMMARY"
