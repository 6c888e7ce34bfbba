#!/usr/bin/env bash
# megatron-core 0.19.x needs Python >= 3.12 (the CPU machines have 3.11): run on the GPU
# machine (python3 3.12, torch 2.11) with the carried wheel. Unpacks the wheel into a folder
# put first on PYTHONPATH (a venv made from that machine's python3, itself a venv, would not
# see its torch), installs portkit editable, then runs the Megatron patch tests: the version
# gate and the multi-process TP runs of CI (CPU, gloo), then the GPU ones.
# Usage: bash benchmarks/megatron_019_gpu.sh path/to/megatron_core-0.19.2-*.whl
set -euo pipefail
cd "$(dirname "$0")/.."
WHEEL=${1:?give the megatron_core 0.19.x wheel}
PY=${PYTHON:-python3}
SITE=${SITE:-/tmp/portkit-megatron019}
"$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$WHEEL"
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -m pip install -q --no-deps --no-build-isolation -e . -e tests/plugin_pkg
"$PY" -c "import megatron.core, sys; print('megatron-core', megatron.core.__version__, 'python', sys.version.split()[0])"
echo "== CPU over gloo (as CI)"
PORTKIT_BACKEND=cpu "$PY" -m pytest -q -p no:cacheprovider tests/patches/test_megatron_patches.py tests/patches/test_megatron_tp.py
echo "== the GPT script, TP=2 x PP=2 in 4 processes through portkit launch (cpu, testvendor), over gloo"
"$PY" -m pytest -q -p no:cacheprovider tests/exec/test_exec_frameworks.py -k megatron
echo "== GPU (native cuda)"
PORTKIT_BACKEND=cuda "$PY" -m pytest -q -p no:cacheprovider tests/patches/test_megatron_tp.py
