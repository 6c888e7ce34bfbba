"""The built-in Triton implementations, registered through the plugin door a vendor uses
(entry point `portkit = "portkit.ops.builtin"` in the group portkit.ops).

They run where the active backend reports `capabilities().triton` (CUDA and ROCm with
triton installed). Triton itself is imported on the first call, never at registration.
"""
from __future__ import annotations

import functools
import importlib
import importlib.metadata
import sys

from portkit.hookspecs import hookimpl
from portkit.plugins import guarded

PRIORITY = 10
NAME = "triton"

# registry op -> (module under portkit.ops, function)
TABLE = {
    "rms_norm_fwd": ("norms_triton", "rms_norm_fwd"),
    "rms_norm_bwd": ("norms_triton", "rms_norm_bwd"),
    "layer_norm_fwd": ("norms_triton", "layer_norm_fwd"),
    "layer_norm_bwd": ("norms_triton", "layer_norm_bwd"),
    "add_rms_norm_fwd": ("norms_triton", "add_rms_norm_fwd"),
    "add_layer_norm_fwd": ("norms_triton", "add_layer_norm_fwd"),
    "rms_norm_bwd_add": ("norms_triton", "rms_norm_bwd_add"),
    "layer_norm_bwd_add": ("norms_triton", "layer_norm_bwd_add"),
    "bias_gelu_fwd": ("activations_triton", "bias_gelu_fwd"),
    "bias_gelu_bwd": ("activations_triton", "bias_gelu_bwd"),
    "swiglu_fwd": ("activations_triton", "swiglu_fwd"),
    "swiglu_bwd": ("activations_triton", "swiglu_bwd"),
    "rotary_fwd": ("rotary_triton", "rotary_fwd"),
    "rotary_bwd": ("rotary_triton", "rotary_bwd"),
    "softmax_fwd": ("softmax_triton", "softmax_fwd"),
    "softmax_bwd": ("softmax_triton", "softmax_bwd"),
    "cross_entropy_chunk": ("cross_entropy_triton", "cross_entropy_chunk"),
    "linear_cross_entropy_fwd": ("cross_entropy_triton", "linear_cross_entropy_fwd"),
    "adamw_step": ("adamw_triton", "adamw_step"),
}


class LazyKernel:
    """Calls portkit.ops.<module>.<function>, importing the module (and triton) on first use."""

    def __init__(self, module: str, function: str):
        self.module, self.function, self._fn = module, function, None
        self.__name__ = function

    def __call__(self, *args):
        if self._fn is None:
            self._fn = getattr(importlib.import_module(f"portkit.ops.{self.module}"), self.function)
        return self._fn(*args)

    def __repr__(self) -> str:
        return f"LazyKernel(portkit.ops.{self.module}.{self.function})"


def runs_triton(backend) -> bool:
    return backend.capabilities().triton


def has_torch_kernels(backend) -> bool:
    return backend.device_type == "cuda"  # CUDA and ROCm builds ship aten's fused LayerNorm


# torch's own fused norms ("aten", portkit.ops.norms_native), ranked below Triton's 10: on an
# H100 the Triton norm kernels are faster (docs/benchmarks.md) and the 1.3B GPT trains 3-4%
# faster with them; aten's C++ launch path wins only host-bound eager runs (PORTKIT_OPS=aten).
NATIVE = {"layer_norm_fwd": 5, "layer_norm_bwd": 5, "rms_norm_fwd": 5, "rms_norm_bwd": 5}


def runs_cublaslt(backend) -> bool:
    if backend.device_type != "cuda" or not runs_triton(backend):  # its bias gradients are Triton column sums
        return False
    from portkit.ops import cublaslt  # imports no CUDA library; available() loads it
    return cublaslt.available()


# the GeLU MLP with its bias, GeLU and their gradients inside cuBLASLt's matmul epilogues
CUBLASLT = {"gelu_mlp_fwd": "lt_fwd", "gelu_mlp_bwd": "lt_bwd"}


def runs_fa4(backend) -> bool:
    """CUDA (not ROCm) on Hopper or Blackwell, with FlashAttention-4 (flash-attn-4) importable."""
    import torch
    if backend.device_type != "cuda" or torch.version.hip is not None:
        return False
    try:  # the distribution, not the module: FlashAttention-2's package is also `flash_attn`
        importlib.metadata.version("flash-attn-4")
    except importlib.metadata.PackageNotFoundError:
        return False
    return backend.module.get_device_capability()[0] in (9, 10) and _imports("flash_attn.cute.interface", "flash-attn-4")


@functools.lru_cache(maxsize=None)
def _imports(module: str, package: str) -> bool:
    """Whether `module` imports; if not, one stderr line says so and how to fix it."""
    _, failure = guarded(importlib.import_module, module)  # whatever a third-party import raises
    if failure:
        print(f"portkit: {package} is installed but does not import ({failure}); portkit keeps torch's op. "
              f"Fix: reinstall {package} with the versions it requires", file=sys.stderr)
    return failure is None


# causal attention on (B, T, H, D) by FlashAttention-4's CuTe kernels
FA4 = {"causal_attention_fwd": "fa4_fwd", "causal_attention_bwd": "fa4_bwd"}


@hookimpl
def portkit_register_ops():
    from portkit.ops import OpImpl  # registers the references the implementations attach to
    return ([OpImpl(op, LazyKernel(mod, fn), runs_triton, PRIORITY, NAME) for op, (mod, fn) in TABLE.items()]
            + [OpImpl(op, LazyKernel("norms_native", op), has_torch_kernels, priority, "aten")
               for op, priority in NATIVE.items()]
            + [OpImpl(op, LazyKernel("mlp", fn), runs_cublaslt, 20, "cublaslt") for op, fn in CUBLASLT.items()]
            + [OpImpl(op, LazyKernel("attention_fa4", fn), runs_fa4, 20, "flash-attn-4") for op, fn in FA4.items()])
