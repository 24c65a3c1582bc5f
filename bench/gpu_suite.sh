#!/usr/bin/env bash
# The real-scale benchmark rows of bench/RESULTS.md, in one go on one GPU (about 8 minutes on an H100):
# bf16, CLIP ViT-L/14-336 (+ T5-v1.1-large-shaped decoder, Qwen3-1.7B-shaped LM), each against its peer.
#   bash bench/gpu_suite.sh [LOG_DIR]        # logs one file per benchmark into LOG_DIR (default bench/logs)
#   ONLY="pretrain_steps vs_open_clip_l14" bash bench/gpu_suite.sh   # a subset, by name
# Needs this package and open-clip-torch (+ torchvision) importable; nothing is downloaded.
set -euo pipefail
LOG_DIR=${1:-bench/logs}
mkdir -p "$LOG_DIR"
export PYTHONUNBUFFERED=1
run() {  # name, then the command
    local name=$1; shift
    if [[ -n "${ONLY:-}" && " $ONLY " != *" $name "* ]]; then return; fi
    echo "=== $name: $*"
    "$@" 2>&1 | grep -v -E "Loading weights|Writing model shards|it/s\]" | tee "$LOG_DIR/$name.log"
}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$LOG_DIR/device.log"
python -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$LOG_DIR/device.log"
run tower_parity python bench/bench_tower_parity.py --size l14-336 --device cuda --dtype bfloat16 --batch 32 --repeats 50
run llava_parity python bench/bench_llava_parity.py --device cuda --repeats 100 --generate-repeats 20 --real-size-latency
run pretrain_steps python bench/bench_pretrain_steps.py --size l14-336 --layers 24 --t5-layers 24 --batch 32 \
    --device cuda --precision bf16 --sequential --repeats 10
run pretrain_steps_compiled python bench/bench_pretrain_steps.py --size l14-336 --layers 24 --t5-layers 24 --batch 32 \
    --device cuda --precision bf16 --sequential --repeats 10 --compile
run vs_open_clip_l14 python bench/bench_vs_open_clip.py --size l14-336 --precision bf16 --batch 64 --steps 10 --warmup 4 \
    --device cuda --compile
run vs_open_clip_b32 python bench/bench_vs_open_clip.py --size b32 --precision bf16 --batch 256 --steps 10 --warmup 3 --device cuda
