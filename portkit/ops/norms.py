"""RMSNorm and LayerNorm: torch references, custom ops and autograd.

Forward and backward are separate registry ops ("rms_norm_fwd", "rms_norm_bwd",
"layer_norm_fwd", "layer_norm_bwd") so a plugin can replace either. Every implementation
takes contiguous rows x (N, H) and computes in fp32.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from portkit.ops import registry
from portkit.ops._op import as_rows, call, check_vector, custom_op, n_rows, pick, with_autograd


# -- references (the numerical oracle) ---------------------------------------------------
@registry.reference("rms_norm_fwd")
def rms_norm_fwd(x: Tensor, weight: Optional[Tensor], eps: float) -> tuple[Tensor, Tensor]:
    """x (N, H) -> y (N, H) in x.dtype, rstd (N,) fp32.
    Traffic: reads x (N*H) and weight (H); writes y (N*H) and rstd (N)."""
    xf = x.float()
    rstd = torch.rsqrt(xf.square().mean(-1) + eps)  # (N,)
    y = xf * rstd[:, None]
    if weight is not None:
        y = y * weight.float()
    return y.to(x.dtype), rstd


@registry.reference("rms_norm_bwd")
def rms_norm_bwd(dy: Tensor, x: Tensor, weight: Optional[Tensor], rstd: Tensor) -> tuple[Tensor, Tensor]:
    """-> dx (N, H), dw (H,) (empty when weight is None).
    Traffic: reads dy and x (2*N*H), weight and rstd; writes dx (N*H) and dw (H)."""
    dyf, xhat = dy.float(), x.float() * rstd[:, None]
    g = dyf * weight.float() if weight is not None else dyf
    dx = rstd[:, None] * (g - xhat * (g * xhat).mean(-1, keepdim=True))
    dw = (dyf * xhat).sum(0).to(weight.dtype) if weight is not None else x.new_empty(0)
    return dx.to(x.dtype), dw


@registry.reference("layer_norm_fwd")
def layer_norm_fwd(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                   eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """x (N, H) -> y (N, H) in x.dtype, mean (N,) fp32, rstd (N,) fp32.
    Traffic: reads x (N*H), weight and bias (2H); writes y (N*H), mean and rstd (2N)."""
    xf = x.float()
    mean = xf.mean(-1)
    xc = xf - mean[:, None]
    rstd = torch.rsqrt(xc.square().mean(-1) + eps)
    y = xc * rstd[:, None]
    if weight is not None:
        y = y * weight.float()
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype), mean, rstd


@registry.reference("layer_norm_bwd")
def layer_norm_bwd(dy: Tensor, x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                   mean: Tensor, rstd: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """-> dx (N, H), dw (H,), db (H,) (empty when weight/bias is None).
    Traffic: reads dy and x (2*N*H); writes dx (N*H), dw and db (2H)."""
    dyf = dy.float()
    xhat = (x.float() - mean[:, None]) * rstd[:, None]
    g = dyf * weight.float() if weight is not None else dyf
    dx = rstd[:, None] * (g - g.mean(-1, keepdim=True) - xhat * (g * xhat).mean(-1, keepdim=True))
    dw = (dyf * xhat).sum(0).to(weight.dtype) if weight is not None else x.new_empty(0)
    db = dyf.sum(0).to(bias.dtype) if bias is not None else x.new_empty(0)
    return dx.to(x.dtype), dw, db


def _grad_like(p: Optional[Tensor], x: Tensor) -> Tensor:
    return p.new_empty(p.shape) if p is not None else x.new_empty(0)


# -- RMSNorm custom op --------------------------------------------------------------------
@custom_op("portkit::rms_norm")
def _rms_norm(x: Tensor, weight: Optional[Tensor], eps: float) -> tuple[Tensor, Tensor]:
    y, rstd = pick("rms_norm_fwd", rms_norm_fwd, x)(as_rows(x), weight, eps)
    return y.view(x.shape), rstd


@_rms_norm.register_fake
def _(x, weight, eps):
    return x.new_empty(x.shape), x.new_empty(n_rows(x), dtype=torch.float32)


@custom_op("portkit::rms_norm_backward")
def _rms_norm_backward(dy: Tensor, x: Tensor, weight: Optional[Tensor], rstd: Tensor) -> tuple[Tensor, Tensor]:
    dx, dw = pick("rms_norm_bwd", rms_norm_bwd, x)(as_rows(dy), as_rows(x), weight, rstd)
    return dx.view(x.shape), dw


@_rms_norm_backward.register_fake
def _(dy, x, weight, rstd):
    return x.new_empty(x.shape), _grad_like(weight, x)


def _rms_setup(ctx, inputs, output):
    x, weight, _ = inputs
    ctx.save_for_backward(x, weight, output[1])


def _rms_backward(ctx, dy, _drstd):
    x, weight, rstd = ctx.saved_tensors
    dx, dw = call(ctx, _rms_norm_backward)(dy, x, weight, rstd)
    return dx, (dw if weight is not None else None), None


_rms_norm_fn = with_autograd(_rms_norm, _rms_backward, _rms_setup)


def rms_norm(x: Tensor, weight: Optional[Tensor] = None, eps: float = 1e-6) -> Tensor:
    """y = x * rsqrt(mean(x^2) + eps) * weight over the last dim, in fp32, returned in x.dtype."""
    check_vector("weight", weight, x.shape[-1], "rms_norm")
    return _rms_norm_fn(x, weight, eps)[0]


# -- LayerNorm custom op ------------------------------------------------------------------
@custom_op("portkit::layer_norm")
def _layer_norm(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                eps: float) -> tuple[Tensor, Tensor, Tensor]:
    y, mean, rstd = pick("layer_norm_fwd", layer_norm_fwd, x)(as_rows(x), weight, bias, eps)
    return y.view(x.shape), mean, rstd


@_layer_norm.register_fake
def _(x, weight, bias, eps):
    n = n_rows(x)
    return x.new_empty(x.shape), x.new_empty(n, dtype=torch.float32), x.new_empty(n, dtype=torch.float32)


@custom_op("portkit::layer_norm_backward")
def _layer_norm_backward(dy: Tensor, x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                         mean: Tensor, rstd: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    fn = pick("layer_norm_bwd", layer_norm_bwd, x)
    dx, dw, db = fn(as_rows(dy), as_rows(x), weight, bias, mean, rstd)
    return dx.view(x.shape), dw, db


@_layer_norm_backward.register_fake
def _(dy, x, weight, bias, mean, rstd):
    return x.new_empty(x.shape), _grad_like(weight, x), _grad_like(bias, x)


def _ln_setup(ctx, inputs, output):
    x, weight, bias, _ = inputs
    ctx.save_for_backward(x, weight, bias, output[1], output[2])


def _ln_backward(ctx, dy, _dmean, _drstd):
    x, weight, bias, mean, rstd = ctx.saved_tensors
    dx, dw, db = call(ctx, _layer_norm_backward)(dy, x, weight, bias, mean, rstd)
    return dx, (dw if weight is not None else None), (db if bias is not None else None), None


_layer_norm_fn = with_autograd(_layer_norm, _ln_backward, _ln_setup)


def layer_norm(x: Tensor, weight: Optional[Tensor] = None, bias: Optional[Tensor] = None,
               eps: float = 1e-5) -> Tensor:
    """LayerNorm over the last dim in fp32, returned in x.dtype; weight/bias (H,) or None."""
    check_vector("weight", weight, x.shape[-1], "layer_norm")
    check_vector("bias", bias, x.shape[-1], "layer_norm")
    return _layer_norm_fn(x, weight, bias, eps)[0]
