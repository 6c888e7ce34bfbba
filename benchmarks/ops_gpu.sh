#!/usr/bin/env bash
# The fused ops on a GPU machine: the full kernel grid, then `portkit bench ops`.
# Run from the repository root on a machine with torch, triton and one GPU:
#   bash benchmarks/ops_gpu.sh [NAME]      (NAME defaults to h100: results/ops-NAME.json)
# portkit is installed without dependencies so the machine's own torch stays.
set -euo pipefail
NAME=${1:-h100}
PY=${PYTHON:-python3}
OUT=${OUT_DIR:-benchmarks/results}
mkdir -p "$OUT"
"$PY" -m pip install -q --no-deps --no-build-isolation -e . >/dev/null
"$PY" -c "import portkit; b = portkit.backend(); print(b.name, b.device_name(), b.capabilities())"
"$PY" -m pytest -q -p no:cacheprovider tests/ops -m "gpu or triton" 2>&1 | tee "$OUT/ops-$NAME-tests.log"
"$PY" -m portkit.bench.cli ops --impls auto,triton,aten --json-out "$OUT/ops-$NAME.json" --markdown-out "$OUT/ops-$NAME.md"
