#!/usr/bin/env bash
# On a CUDA machine: each single-GPU-capable script of portkit/conformance/scripts run natively and
# through `portkit exec` (backend cuda); prints both JSON loss lines. They must be equal:
# on CUDA the adaptation leaves torch.cuda native. Frameworks that are not installed are
# skipped with a line saying so (carry their wheels to test them; colossalai imports bitsandbytes).
# Usage: bash benchmarks/exec_gpu.sh [PYTHON]   (default: .venv/bin/python, else python3)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${1:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
S=portkit/conformance/scripts
has() { "$PY" -c "import $1" 2>/dev/null; }
both() {  # name, then the command after the interpreter
  local name=$1; shift
  echo "== $name"
  echo -n "native:  "; "$PY" "$@" 2>/tmp/exec_gpu_native.err | grep '^{' || tail -3 /tmp/exec_gpu_native.err
  echo -n "portkit: "; "$PY" -m portkit.cli exec --backend cuda -- "$@" 2>/tmp/exec_gpu_portkit.err | grep '^{' \
    || tail -3 /tmp/exec_gpu_portkit.err
}
launched() {  # name, script, args: one process through torchrun, natively and through portkit launch
  local name=$1 script=$2; shift 2
  echo "== $name"
  echo -n "native:  "; "$PY" -m torch.distributed.run --standalone --nproc-per-node 1 $S/$script "$@" 2>/dev/null \
    | grep '^{' || echo "(failed)"
  echo -n "portkit: "; "$PY" -m portkit.cli launch --backend cuda --nproc-per-node 1 -- $S/$script "$@" 2>/dev/null \
    | grep '^{' || echo "(failed)"
}
both "nanoGPT train.py (bf16 autocast)" $S/train.py
both "nanoGPT train.py (fp16 + GradScaler)" $S/train.py --dtype=float16
both "nanoGPT train.py DDP x1 (nccl)" -m torch.distributed.run --standalone --nproc-per-node 1 $S/train.py
skipped() { echo "== $1: skipped ($1 is not installed; carry its wheel)"; }
if has deepspeed; then
  for stage in 2 3; do
    launched "DeepSpeed ZeRO-$stage (1 GPU)" ds_train.py --deepspeed_config $S/ds_config_zero$stage.json
  done
else skipped deepspeed; fi
if has colossalai; then
  launched "Colossal-AI Booster TorchDDPPlugin (1 GPU)" colo_train.py --plugin torch_ddp
  launched "Colossal-AI Booster LowLevelZeroPlugin (1 GPU)" colo_train.py --plugin low_level_zero
else skipped colossalai; fi
if has megatron.core; then launched "Megatron-core GPT TP=1 PP=1 (1 GPU)" mcore_gpt.py --tp 1 --pp 1
else skipped megatron.core; fi
if has apex; then
  both "apex fused modules (NVIDIA apex)" $S/apex_train.py
else
  echo "== apex: NVIDIA apex is not installed: only the portkit run (apex shim) is shown"
  echo -n "portkit: "; "$PY" -m portkit.cli exec --backend cuda -- $S/apex_train.py 2>&1 | grep '^{\|Error'
fi
