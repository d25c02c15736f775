#!/usr/bin/env bash
# The checks that need a GPU, as one short script for a lent CUDA machine (no internet there: random
# real-size weights only, built from configs). Run from the repository root with a Python that has
# torch (CUDA build) and this project's dependencies:
#   bash benchmarks/gpu_check.sh [OUT_DIR]
# Writes each check's output to OUT_DIR (default $OUT, else outputs/gpu_check) and prints the JSON
# headline lines. Bounded: each check has a timeout, so the whole script stays under ~9 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-outputs/gpu_check}}"
mkdir -p "$OUT_DIR"
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" CUBLAS_WORKSPACE_CONFIG=:4096:8 HF_HUB_OFFLINE=1
run() {  # name timeout_s command...
  local name=$1 limit=$2; shift 2
  echo "== $name"
  timeout "$limit" "$@" >"$OUT_DIR/$name.log" 2>&1
  echo "rc=$? ($name)"; tail -n 1 "$OUT_DIR/$name.log"
}
run nvidia-smi 20 nvidia-smi
run doctor 120 "$PY" -m pipelines.doctor model=tiny-sd15 model.options.device=cuda
run backbone_step 240 "$PY" benchmarks/backbone_step.py --quick --device cuda --budget 200
run decode_drift 180 "$PY" benchmarks/decode_drift.py --quick --device cuda
