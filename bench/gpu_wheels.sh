#!/usr/bin/env bash
# The wheels a bare CUDA image (Python 3.12, torch, torchvision, timm, transformers, accelerate already there) lacks
# for bench/gpu_suite.sh, downloaded here for carrying: bash bench/gpu_wheels.sh DIR; there:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site DIR/*.whl && export PYTHONPATH=$PWD:/tmp/site
# TORCHAO_VERSION must match the image's torch (torchao's compatibility table; 0.17.x was released for torch 2.11).
set -euo pipefail
DIR=${1:?usage: bench/gpu_wheels.sh DIR}
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$DIR" open-clip-torch==3.3.0 ftfy wcwidth webdataset braceexpand "torchao==${TORCHAO_VERSION:-0.17.0}"
