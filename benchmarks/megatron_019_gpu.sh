#!/usr/bin/env bash
# megatron-core 0.19.x needs Python >= 3.12 (the CPU machines have 3.11): run on the GPU
# machine (python3 3.12, torch 2.11) with the carried wheel. Installs portkit and the wheel
# into a throwaway venv that sees the system torch, then runs the Megatron patch tests: the
# version gate, and the same multi-process TP runs as CI (CPU, gloo), then on the GPU.
# Usage: bash benchmarks/megatron_019_gpu.sh path/to/megatron_core-0.19.2-*.whl
set -euo pipefail
cd "$(dirname "$0")/.."
WHEEL=${1:?give the megatron_core 0.19.x wheel}
VENV=${VENV:-/tmp/portkit-megatron019}
python3 -m venv --system-site-packages "$VENV"
"$VENV/bin/pip" install -q --no-deps "$WHEEL"
"$VENV/bin/pip" install -q --no-deps -e . -e tests/plugin_pkg
"$VENV/bin/python" -c "import megatron.core, sys; print('megatron-core', megatron.core.__version__, 'python', sys.version.split()[0])"
echo "== CPU over gloo (as CI)"
PORTKIT_BACKEND=cpu "$VENV/bin/python" -m pytest -q tests/patches/test_megatron_patches.py tests/patches/test_megatron_tp.py
echo "== GPU (native cuda)"
PORTKIT_BACKEND=cuda "$VENV/bin/python" -m pytest -q tests/patches/test_megatron_tp.py
