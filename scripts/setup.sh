#!/usr/bin/env bash
# Creates .venv with everything portkit and its tests need, on a fresh CPU machine.
# Idempotent: a stamp of this file's hash skips the work when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${PORTKIT_VENV:-.venv}
PY=${PYTHON:-python3}
stamp="$VENV/.portkit-setup-$(cat scripts/setup.sh pyproject.toml tests/plugin_pkg/pyproject.toml 2>/dev/null | sha1sum | cut -c1-12)"
[ -f "$stamp" ] && exit 0

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$@"; }

# torch first and pinned: the CPU build lies on disk; anything unpinned would pull a CUDA build.
pip torch==2.13.0 pluggy psutil pyyaml pytest rich matplotlib numpy triton==3.7.1
# DeepSpeed builds from source against the torch above; no compiled ops.
DS_BUILD_OPS=0 pip --no-build-isolation deepspeed==0.19.8 torch==2.13.0
pip megatron-core==0.16.1 torch==2.13.0
# Colossal-AI 0.5.0 pins torch<=2.5.1: take it without its pins, then what it really imports.
pip --no-deps colossalai==0.5.0
pip torch==2.13.0 tqdm packaging click contexttimer pydantic safetensors einops ninja peft transformers accelerate
pip --no-deps galore-torch bitsandbytes
# portkit itself, editable, and the test plugin package (a stand-in for a vendor's distribution).
pip --no-deps -e . -e tests/plugin_pkg
rm -f "$VENV"/.portkit-setup-*
touch "$stamp"
