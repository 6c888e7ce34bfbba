"""Megatron-core on any portkit backend.

Megatron-core calls torch.cuda.* and passes device='cuda' throughout (494 lines in 89
files in 0.16.1). On a backend whose device type is not 'cuda' these patches put a
`portkit.patches.torch_cuda.TorchProxy` in place of the module-global `torch` of each
Megatron module listed in REDIRECTED: inside those modules only, `torch.cuda` is the
backend's device module (the CPU stand-in on the CPU, torch.npu on Ascend ...) and
device 'cuda' in tensor factories, torch.device and torch.autocast is the backend's
device type. The rest of the process keeps the real torch. The RNG-state helpers of
tensor_parallel/random.py are replaced too: they reach CUDA generators directly and
queue their work with torch.cuda._lazy_call, which never runs without CUDA.
On CUDA/ROCm nothing is patched (state 'skipped': Megatron runs natively).

For a recipe:

    from portkit.patches import megatron
    megatron.init(tp=2, pp=1, seed=1234)   # under torchrun: patches, process group, parallel_state

On npu/mlu/xpu `init` also turns on the global torch.cuda redirection (patches/torch_cuda.py),
since Megatron moves tensors with Tensor.cuda() too.

NVIDIA apex: `init` does not install portkit's apex shim. Megatron-core's bare
`import apex` checks then fail and it takes its torch code paths (WrappedTorchNorm,
torch optimizers). Installing the shim first (`portkit.patches.apex.install()`) is
supported: the shim serves the apex paths Megatron then takes (FusedLayerNorm through
FusedLayerNormAffineFunction / FastLayerNormFN, apex FusedAdam/FusedSGD, amp_C with
multi_tensor_applier), numerically equal to the torch paths.
"""
from __future__ import annotations

import os
from typing import Any

import torch

from portkit import patching, runtime
from portkit.patches import torch_cuda
from portkit.patching import Patch

FRAMEWORK = "megatron-core"
VERSIONS = ">=0.16,<0.17 || >=0.19,<0.20"  # tested: 0.16.1 (CPU, Python 3.11); 0.19.2 on the GPU machine (Python 3.12)

# Megatron modules whose `torch` is redirected: the GPT model, tensor-parallel layers,
# parallel state, pipeline schedules, DDP and the optimizer (the paths of a GPT training).
REDIRECTED = [
    "megatron.core.utils",
    "megatron.core.parallel_state",
    "megatron.core.rerun_state_machine",
    "megatron.core.tensor_parallel.random",
    "megatron.core.tensor_parallel.layers",
    "megatron.core.tensor_parallel.mappings",
    "megatron.core.tensor_parallel.utils",
    "megatron.core.tensor_parallel.data",
    "megatron.core.tensor_parallel.cross_entropy",
    "megatron.core.transformer.attention",
    "megatron.core.transformer.dot_product_attention",
    "megatron.core.transformer.transformer_layer",
    "megatron.core.transformer.transformer_block",
    "megatron.core.transformer.module",
    "megatron.core.models.gpt.gpt_model",
    "megatron.core.models.common.language_module.language_module",
    "megatron.core.pipeline_parallel.schedules",
    "megatron.core.pipeline_parallel.p2p_communication",
    "megatron.core.distributed.distributed_data_parallel",
    "megatron.core.distributed.param_and_grad_buffer",
    "megatron.core.distributed.finalize_model_grads",
    "megatron.core.optimizer.optimizer",
    "megatron.core.optimizer.clip_grads",
    "megatron.core.optimizer.grad_scaler",
]
RANDOM = "megatron.core.tensor_parallel.random"

_saved: dict = {}


def _needed() -> str | None:
    if runtime.active().device_type == "cuda":
        return "the active backend is a CUDA/ROCm device: Megatron-core runs natively"
    return None


def _proxy() -> torch_cuda.TorchProxy:
    backend = runtime.active()
    return torch_cuda.TorchProxy(torch_cuda.device_module(backend), backend.device_type)


def _redirect(module: Any) -> None:
    patching.replace(module, "torch", _proxy(), _saved)


def _unredirect(module: Any) -> None:
    patching.restore(module, "torch", _saved)


# -- tensor_parallel/random.py: the RNG state of the backend's device ---------------------
def _get_rng_state(device: Any = "cuda", clone: bool = False, graph_safe: bool = False) -> torch.Tensor:
    if graph_safe:
        raise NotImplementedError("graph-safe RNG states (CUDA graphs) exist only on CUDA; "
                                  "set use_cudagraphable_rng=False")
    return torch_cuda.device_module().get_rng_state()


def _set_rng_state(new_state: torch.Tensor, device: Any = -1, graph_safe: bool = False) -> None:
    if graph_safe:
        raise NotImplementedError("graph-safe RNG states (CUDA graphs) exist only on CUDA; "
                                  "set use_cudagraphable_rng=False")
    torch_cuda.device_module().set_rng_state(new_state)


def _patch_random(module: Any) -> None:
    _redirect(module)
    patching.replace(module, "_get_cuda_rng_state", _get_rng_state, _saved)
    patching.replace(module, "_set_cuda_rng_state", _set_rng_state, _saved)


def _unpatch_random(module: Any) -> None:
    patching.restore(module, "_set_cuda_rng_state", _saved)
    patching.restore(module, "_get_cuda_rng_state", _saved)
    _unredirect(module)


def _patch(target: str) -> Patch:
    short = target.removeprefix("megatron.core.")
    if target == RANDOM:
        return Patch(name=f"megatron.rng:{short}", framework=FRAMEWORK, versions=VERSIONS, target=target,
                     description="RNG tracker states and torch.cuda on the backend's device (fork, seed)",
                     apply=_patch_random, undo=_unpatch_random, needed=_needed)
    return Patch(name=f"megatron.redirect:{short}", framework=FRAMEWORK, versions=VERSIONS, target=target,
                 description="torch.cuda and device='cuda' in this module go to the active backend",
                 apply=_redirect, undo=_unredirect, needed=_needed)


PATCHES = [_patch(target) for target in REDIRECTED]


# -- the entry point for recipes ------------------------------------------------------
def enable() -> list[Patch]:
    """Apply the Megatron-core patches for the active backend (refuses outside VERSIONS)."""
    return patching.enable(FRAMEWORK)


def disable() -> None:
    patching.disable(FRAMEWORK)


def init(tp: int = 1, pp: int = 1, seed: int = 1234, timeout_s: float = 600.0) -> None:
    """Enable the patches, start the process group on the active backend (env:// as torchrun
    sets it) if not yet started, and initialise Megatron's parallel_state and RNG tracker."""
    backend = runtime.active()
    enable()
    if backend.device_type != "cpu":  # npu/mlu/xpu: Megatron also calls Tensor.cuda()
        torch_cuda.install()  # (skipped on cuda; on the CPU the per-module redirection suffices)
    _init_process_group(backend, timeout_s)
    from megatron.core import parallel_state, tensor_parallel

    world = torch.distributed.get_world_size()
    if world % (tp * pp):
        raise ValueError(f"world size {world} is not divisible by tp*pp = {tp}*{pp}; "
                         f"launch a multiple of {tp * pp} processes or change tp/pp")
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)


def _init_process_group(backend, timeout_s: float) -> None:
    import datetime

    if torch.distributed.is_initialized():
        return
    if backend.device_type != "cpu":
        backend.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    torch.distributed.init_process_group(backend.dist_backend, timeout=datetime.timedelta(seconds=timeout_s))
