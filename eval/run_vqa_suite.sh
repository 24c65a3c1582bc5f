#!/usr/bin/env bash
# Answer and score every VQA benchmark found under DATA_ROOT with one LlavaNext checkpoint.
# Layout under DATA_ROOT: see reasonclip_llava/evaluation/suite.py (VQA_LAYOUT) or eval/README.md.
# usage: eval/run_vqa_suite.sh MODEL_DIR DATA_ROOT OUT_DIR [extra `reasonclip eval suite` options]
set -euo pipefail
[ $# -ge 3 ] || { echo "usage: $0 MODEL_DIR DATA_ROOT OUT_DIR [--batch-size 16 --dtype ...]" >&2; exit 2; }
model=$1 data_root=$2 out=$3; shift 3
exec reasonclip eval suite vqa --model "$model" --data-root "$data_root" --out "$out" --batch-size "${BATCH_SIZE:-16}" "$@"
