"""apex.normalization and apex.contrib.layer_norm on portkit.ops.layer_norm / rms_norm.

Numerics follow apex's CUDA kernels: statistics in fp32; FusedLayerNorm / FusedRMSNorm and
the *_affine functions return the input's dtype, the Mixed* variants and FastLayerNorm the
weight's dtype. `memory_efficient` is accepted and changes nothing but memory (portkit's
ops save the input). A multi-dimensional normalized_shape is flattened into one last dim.
"""
from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor
from torch.nn import Parameter, init

import portkit.ops as ops


def _shape(normalized_shape) -> torch.Size:
    if isinstance(normalized_shape, numbers.Integral):
        normalized_shape = (normalized_shape,)
    return torch.Size(normalized_shape)


def _flat(x: Tensor, normalized_shape, *params: Tensor | None):
    """x (..., *normalized_shape) -> (..., H); params -> (H,)."""
    shape = _shape(normalized_shape)
    k, h = len(shape), math.prod(shape)
    if tuple(x.shape[-k:]) != tuple(shape):
        raise ValueError(f"input of shape {tuple(x.shape)} does not end with normalized_shape {tuple(shape)}")
    return (x.reshape(*x.shape[:-k], h), *(p.reshape(h) if p is not None else None for p in params))


def _layer_norm(x, weight, bias, normalized_shape, eps, out_dtype=None) -> Tensor:
    xf, w, b = _flat(x, normalized_shape, weight, bias)
    if out_dtype is not None and out_dtype != x.dtype:
        xf = xf.to(out_dtype)  # stats stay fp32 inside the op; the result comes out in out_dtype
    return ops.layer_norm(xf, w, b, eps).view(*x.shape[:xf.dim() - 1], *_shape(normalized_shape))


def _rms_norm(x, weight, normalized_shape, eps, out_dtype=None) -> Tensor:
    xf, w = _flat(x, normalized_shape, weight)
    if out_dtype is not None and out_dtype != x.dtype:
        xf = xf.to(out_dtype)
    return ops.rms_norm(xf, w, eps).view(*x.shape[:xf.dim() - 1], *_shape(normalized_shape))


# -- functional forms (apex.normalization.fused_layer_norm) --------------------------------
def fused_layer_norm_affine(input, weight, bias, normalized_shape, eps=1e-6, memory_efficient=False):
    return _layer_norm(input, weight, bias, normalized_shape, eps)


def fused_layer_norm(input, normalized_shape, eps=1e-6, memory_efficient=False):
    return _layer_norm(input, None, None, normalized_shape, eps)


def mixed_dtype_fused_layer_norm_affine(input, weight, bias, normalized_shape, eps=1e-6, memory_efficient=False):
    return _layer_norm(input, weight, bias, normalized_shape, eps, out_dtype=weight.dtype)


def fused_rms_norm_affine(input, weight, normalized_shape, eps=1e-6, memory_efficient=False):
    return _rms_norm(input, weight, normalized_shape, eps)


def fused_rms_norm(input, normalized_shape, eps=1e-6, memory_efficient=False):
    return _rms_norm(input, None, normalized_shape, eps)


def mixed_dtype_fused_rms_norm_affine(input, weight, normalized_shape, eps=1e-6, memory_efficient=False):
    return _rms_norm(input, weight, normalized_shape, eps, out_dtype=weight.dtype)


class _Function:
    """apex's autograd.Function classes, called as `Cls.apply(...)`. portkit's ops carry their
    own autograd, so `apply` is the differentiable op; `forward` keeps apex's signature for
    code that inspects it (Megatron-core looks for `memory_efficient`)."""

    @classmethod
    def apply(cls, *args, **kwargs):
        return cls.forward(None, *args, **kwargs)


class FusedLayerNormAffineFunction(_Function):
    @staticmethod
    def forward(ctx, input, weight, bias, normalized_shape, eps, memory_efficient=False):
        return fused_layer_norm_affine(input, weight, bias, normalized_shape, eps, memory_efficient)


class FusedLayerNormAffineMixedDtypesFunction(_Function):
    @staticmethod
    def forward(ctx, input, weight, bias, normalized_shape, eps, memory_efficient=False):
        return mixed_dtype_fused_layer_norm_affine(input, weight, bias, normalized_shape, eps)


class FusedLayerNormFunction(_Function):
    @staticmethod
    def forward(ctx, input, normalized_shape, eps, memory_efficient=False):
        return fused_layer_norm(input, normalized_shape, eps)


class FusedRMSNormAffineFunction(_Function):
    @staticmethod
    def forward(ctx, input, weight, normalized_shape, eps, memory_efficient=False):
        return fused_rms_norm_affine(input, weight, normalized_shape, eps)


class FusedRMSNormFunction(_Function):
    @staticmethod
    def forward(ctx, input, normalized_shape, eps, memory_efficient=False):
        return fused_rms_norm(input, normalized_shape, eps)


# -- modules (apex.normalization) ----------------------------------------------------------
class _FusedNorm(torch.nn.Module):
    """FusedLayerNorm and FusedRMSNorm: the same module but for the bias."""

    PARAMS: tuple[str, ...]  # weight (ones), then bias (zeros) where the norm has one

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, memory_efficient=False):
        super().__init__()
        self.normalized_shape = _shape(normalized_shape)
        self.eps, self.elementwise_affine, self.memory_efficient = eps, elementwise_affine, memory_efficient
        for name in self.PARAMS:
            self.register_parameter(name, Parameter(torch.empty(*self.normalized_shape)) if elementwise_affine else None)
        self.reset_parameters()

    def reset_parameters(self):
        if self.elementwise_affine:
            init.ones_(self.weight)
            if "bias" in self.PARAMS:
                init.zeros_(self.bias)

    def extra_repr(self):
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"


class FusedLayerNorm(_FusedNorm):
    PARAMS = ("weight", "bias")

    def forward(self, input):
        return _layer_norm(input, self.weight, self.bias, self.normalized_shape, self.eps)


class FusedRMSNorm(_FusedNorm):
    PARAMS = ("weight",)

    def forward(self, input):
        return _rms_norm(input, self.weight, self.normalized_shape, self.eps)


def _mixed_kwargs(cls_name: str, kwargs: dict) -> None:
    if not kwargs.pop("elementwise_affine", True):
        raise RuntimeError(f"{cls_name} does not support `elementwise_affine = False`")
    if kwargs:
        raise TypeError(f"{cls_name} got unexpected arguments {sorted(kwargs)}")


class MixedFusedLayerNorm(FusedLayerNorm):
    """Output in the parameters' dtype (e.g. fp32 weights on bf16 activations)."""

    def __init__(self, normalized_shape, eps=1e-5, *, memory_efficient=False, **kwargs):
        _mixed_kwargs("MixedFusedLayerNorm", kwargs)
        super().__init__(normalized_shape, eps, elementwise_affine=True, memory_efficient=memory_efficient)

    def forward(self, input):
        return _layer_norm(input, self.weight, self.bias, self.normalized_shape, self.eps, out_dtype=self.weight.dtype)


class MixedFusedRMSNorm(FusedRMSNorm):
    def __init__(self, normalized_shape, eps=1e-5, *, memory_efficient=False, **kwargs):
        _mixed_kwargs("MixedFusedRMSNorm", kwargs)
        super().__init__(normalized_shape, eps, elementwise_affine=True, memory_efficient=memory_efficient)

    def forward(self, input):
        return _rms_norm(input, self.weight, self.normalized_shape, self.eps, out_dtype=self.weight.dtype)


# -- apex.contrib.layer_norm.layer_norm -----------------------------------------------------
class FastLayerNormFN(_Function):
    """Layer norm over the last dim (hidden = gamma.numel()), output in gamma's dtype."""

    @staticmethod
    def forward(ctx, x, gamma, beta, epsilon, memory_efficient=False):
        return _layer_norm(x, gamma, beta, gamma.shape, epsilon, out_dtype=gamma.dtype)


class FastLayerNorm(torch.nn.Module):
    def __init__(self, hidden_size, eps=1e-5, memory_efficient=False):
        super().__init__()
        self.epsilon, self.memory_efficient = eps, memory_efficient
        self.weight = Parameter(torch.empty(hidden_size))
        self.bias = Parameter(torch.empty(hidden_size))
        self.reset_parameters()

    def reset_parameters(self):
        init.ones_(self.weight)
        init.zeros_(self.bias)

    def forward(self, x):
        return FastLayerNormFN.apply(x, self.weight, self.bias, self.epsilon, self.memory_efficient)
