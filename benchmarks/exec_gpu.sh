#!/usr/bin/env bash
# On a CUDA machine: each single-GPU-capable script of tests/exec/scripts run natively and
# through `portkit exec` (backend cuda); prints both JSON loss lines. They must be equal:
# on CUDA the adaptation leaves torch.cuda native. Frameworks that are not installed are
# skipped with a line saying so (carry their wheels to test them).
# Usage: bash benchmarks/exec_gpu.sh [PYTHON]   (default: .venv/bin/python, else python3)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${1:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
S=tests/exec/scripts
has() { "$PY" -c "import $1" 2>/dev/null; }
both() {  # name, then the command after the interpreter
  local name=$1; shift
  echo "== $name"
  echo -n "native:  "; "$PY" "$@" 2>/tmp/exec_gpu_native.err | grep '^{' || tail -3 /tmp/exec_gpu_native.err
  echo -n "portkit: "; "$PY" -m portkit.cli exec --backend cuda -- "$@" 2>/tmp/exec_gpu_portkit.err | grep '^{' \
    || tail -3 /tmp/exec_gpu_portkit.err
}
both "nanoGPT train.py (bf16 autocast)" $S/train.py
both "nanoGPT train.py (fp16 + GradScaler)" $S/train.py --dtype=float16
both "nanoGPT train.py DDP x1 (nccl)" -m torch.distributed.run --standalone --nproc-per-node 1 $S/train.py
if has deepspeed; then
  for stage in 2 3; do
    echo "== DeepSpeed ZeRO-$stage (1 GPU)"
    echo -n "native:  "; "$PY" -m torch.distributed.run --standalone --nproc-per-node 1 $S/ds_train.py \
      --deepspeed_config $S/ds_config_zero$stage.json 2>/dev/null | grep '^{'
    echo -n "portkit: "; "$PY" -m portkit.cli launch --backend cuda --nproc-per-node 1 -- $S/ds_train.py \
      --deepspeed_config $S/ds_config_zero$stage.json 2>/dev/null | grep '^{'
  done
else
  echo "== DeepSpeed: skipped (deepspeed is not installed; carry its wheel)"
fi
if has apex; then
  both "apex fused modules (NVIDIA apex)" $S/apex_train.py
else
  echo "== apex: NVIDIA apex is not installed: only the portkit run (apex shim) is shown"
  echo -n "portkit: "; "$PY" -m portkit.cli exec --backend cuda -- $S/apex_train.py 2>&1 | grep '^{\|Error'
fi
