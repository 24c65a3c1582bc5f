#!/usr/bin/env bash
# Every encoder benchmark (compositional, retrieval, zero-shot) found under DATA_ROOT for one CLIP/SigLIP.
# Layout under DATA_ROOT: see reasonclip_llava/evaluation/suite.py (ENCODER_LAYOUT) or eval/README.md.
# usage: eval/run_encoder_suite.sh MODEL_DIR DATA_ROOT OUT_DIR [extra `reasonclip eval suite` options]
set -euo pipefail
[ $# -ge 3 ] || { echo "usage: $0 MODEL_DIR DATA_ROOT OUT_DIR [--benchmarks sugarcrepe winoground ...]" >&2; exit 2; }
model=$1 data_root=$2 out=$3; shift 3
exec reasonclip eval suite encoder --model "$model" --data-root "$data_root" --out "$out" --batch-size "${BATCH_SIZE:-128}" "$@"
