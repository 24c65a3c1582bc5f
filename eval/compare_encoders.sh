#!/usr/bin/env bash
# Base CLIP vs ReasonCLIP stage 1 vs stage 2 (or any encoders) on the encoder suite, one comparison table.
# usage: eval/compare_encoders.sh DATA_ROOT OUT_DIR NAME=MODEL_DIR [NAME=MODEL_DIR ...]
set -euo pipefail
[ $# -ge 3 ] || { echo "usage: $0 DATA_ROOT OUT_DIR NAME=MODEL_DIR..." >&2; exit 2; }
data_root=$1 out=$2; shift 2
runs=()
for pair in "$@"; do
  name=${pair%%=*} model=${pair#*=}
  reasonclip eval suite encoder --model "$model" --data-root "$data_root" --out "$out/$name" --batch-size "${BATCH_SIZE:-128}"
  runs+=("$name=$out/$name")
done
reasonclip eval report "${runs[@]}" --out "$out" --title "Encoder comparison"
