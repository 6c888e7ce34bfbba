#!/usr/bin/env bash
# Issue 18's measurements on one H200, written under $OUT (default benchmarks/results):
# generation parity test, the fused loss and eager ops beside torch and Liger-Kernel, and
# bench train (each variant in its own process, convergence verdict) at the given sizes.
# Run from the repository root:  SIZES="124m 1.3b 350m" bash benchmarks/h200_perf.sh
# Liger-Kernel is used when importable (carry its wheel; see the device notes).
set -uo pipefail
OUT=${OUT:-benchmarks/results}
PY=${PYTHON:-python3}
SIZES=${SIZES:-124m 350m 1.3b}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
"$PY" -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
log() { tee -a "$OUT/h200-perf.log"; }
timeout 60 "$PY" -m pytest -q -p no:cacheprovider tests/models/test_gpt_model.py -m gpu 2>&1 | tail -3 | log
ops() { timeout 60 "$PY" -m portkit.cli bench ops "$@" 2>&1 | log; }
ops --ops linear_cross_entropy --rows 8192 --hidden 4096 --vocab 128256 --iters 10 --json-out "$OUT/ops-h200-lce-128k.json"
ops --ops linear_cross_entropy --rows 16384 --hidden 2048 --vocab 50304 --iters 10 --json-out "$OUT/ops-h200-lce-50k.json"
ops --ops rms_norm,layer_norm,swiglu,bias_gelu --rows 16384 --hidden 4096 --iters 20 --json-out "$OUT/ops-h200-eager-16384.json"
ops --ops rms_norm,layer_norm,swiglu --rows 256 --hidden 4096 --iters 50 --json-out "$OUT/ops-h200-eager-256.json"
timeout 60 "$PY" benchmarks/eager_overhead.py 2>&1 | log
ppo=--ppo
for size in $SIZES; do
  timeout "${TRAIN_TIMEOUT:-200}" "$PY" -m portkit.cli bench train --models "$size" \
    --variants portkit,portkit-compiled,native-eager,native-compiled --steps "${STEPS:-8}" --warmup "${WARMUP:-4}" \
    $ppo --json-out "$OUT/train-h200-$size.json" 2>&1 | grep -v "^  " | log
  ppo=
done
