"""bias + GeLU (tanh approximation, Megatron's fused bias_gelu) and packed SwiGLU.

Registry ops: "bias_gelu_fwd", "bias_gelu_bwd", "swiglu_fwd", "swiglu_bwd". Every
implementation takes contiguous rows (N, H) (SwiGLU: (N, 2H)) and computes in fp32.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from portkit.ops import registry
from portkit.ops._op import as_rows, call, check_vector, custom_op, eager_native, pick, with_autograd

GELU_K = math.sqrt(2.0 / math.pi)
GELU_C = 0.044715


def _gelu_grad(z: Tensor) -> Tensor:
    """d gelu_tanh(z) / dz, fp32."""
    t = torch.tanh(GELU_K * (z + GELU_C * z * z * z))
    return 0.5 * (1 + t) + 0.5 * z * (1 - t * t) * GELU_K * (1 + 3 * GELU_C * z * z)


@registry.reference("bias_gelu_fwd")
def bias_gelu_fwd(x: Tensor, bias: Optional[Tensor]) -> Tensor:
    """x (N, H) -> gelu_tanh(x + bias) in x.dtype. Traffic: reads x (N*H) and bias (H); writes N*H."""
    z = x.float() + bias.float() if bias is not None else x.float()
    return torch.nn.functional.gelu(z, approximate="tanh").to(x.dtype)


@registry.reference("bias_gelu_bwd")
def bias_gelu_bwd(dy: Tensor, x: Tensor, bias: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """-> dx (N, H), dbias (H,) (empty when bias is None).
    Traffic: reads dy and x (2*N*H); writes dx (N*H) and dbias (H)."""
    z = x.float() + bias.float() if bias is not None else x.float()
    dz = dy.float() * _gelu_grad(z)
    db = dz.sum(0).to(bias.dtype) if bias is not None else x.new_empty(0)
    return dz.to(x.dtype), db


@registry.reference("swiglu_fwd")
def swiglu_fwd(x: Tensor) -> Tensor:
    """x (N, 2H) packed [gate | up] -> silu(gate) * up (N, H).
    Traffic: reads 2*N*H; writes N*H."""
    gate, up = x.float().chunk(2, dim=-1)
    return (torch.nn.functional.silu(gate) * up).to(x.dtype)


@registry.reference("swiglu_bwd")
def swiglu_bwd(dy: Tensor, x: Tensor) -> Tensor:
    """-> dx (N, 2H). Traffic: reads dy (N*H) and x (2*N*H); writes dx (2*N*H)."""
    gate, up = x.float().chunk(2, dim=-1)
    s = torch.sigmoid(gate)
    dyf = dy.float()
    dgate = dyf * up * s * (1 + gate * (1 - s))
    dup = dyf * gate * s
    return torch.cat([dgate, dup], dim=-1).to(x.dtype)


# -- bias_gelu custom op ------------------------------------------------------------------
@custom_op("portkit::bias_gelu")
def _bias_gelu(x: Tensor, bias: Optional[Tensor]) -> Tensor:
    return pick("bias_gelu_fwd", bias_gelu_fwd, x)(as_rows(x), bias).view(x.shape)


@_bias_gelu.register_fake
def _(x, bias):
    return x.new_empty(x.shape)


@custom_op("portkit::bias_gelu_backward")
def _bias_gelu_backward(dy: Tensor, x: Tensor, bias: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    dx, db = pick("bias_gelu_bwd", bias_gelu_bwd, x)(as_rows(dy), as_rows(x), bias)
    return dx.view(x.shape), db


@_bias_gelu_backward.register_fake
def _(dy, x, bias):
    return x.new_empty(x.shape), (bias.new_empty(bias.shape) if bias is not None else x.new_empty(0))


def _bg_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _bg_backward(ctx, dy):
    x, bias = ctx.saved_tensors
    dx, db = call(ctx, _bias_gelu_backward)(dy, x, bias)
    return dx, (db if bias is not None else None)


_bias_gelu_fn = with_autograd(_bias_gelu, _bg_backward, _bg_setup)


def bias_gelu(x: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """gelu(x + bias) with the tanh approximation, computed in fp32; bias (H,) or None."""
    check_vector("bias", bias, x.shape[-1], "bias_gelu")
    if eager_native("bias_gelu_fwd", x, bias):
        return F.gelu(x + bias if bias is not None else x, approximate="tanh")
    return _bias_gelu_fn(x, bias)


# -- swiglu custom op ---------------------------------------------------------------------
@custom_op("portkit::swiglu")
def _swiglu(x: Tensor) -> Tensor:
    y = pick("swiglu_fwd", swiglu_fwd, x)(as_rows(x))
    return y.view(*x.shape[:-1], x.shape[-1] // 2)


@_swiglu.register_fake
def _(x):
    return x.new_empty(*x.shape[:-1], x.shape[-1] // 2)


@custom_op("portkit::swiglu_backward")
def _swiglu_backward(dy: Tensor, x: Tensor) -> Tensor:
    return pick("swiglu_bwd", swiglu_bwd, x)(as_rows(dy), as_rows(x)).view(x.shape)


@_swiglu_backward.register_fake
def _(dy, x):
    return x.new_empty(x.shape)


def _sw_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])


def _sw_backward(ctx, dy):
    (x,) = ctx.saved_tensors
    return call(ctx, _swiglu_backward)(dy, x)


_swiglu_fn = with_autograd(_swiglu, _sw_backward, _sw_setup)


def swiglu(x: Tensor) -> Tensor:
    """x (..., 2H) packed [gate | up] -> silu(gate) * up (..., H), computed in fp32."""
    if x.shape[-1] % 2:
        raise ValueError(f"swiglu: the last dimension of x is {x.shape[-1]}; it must be even "
                         f"(packed [gate | up])")
    return _swiglu_fn(x)
