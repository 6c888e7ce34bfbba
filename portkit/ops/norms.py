"""RMSNorm and LayerNorm: torch references, custom ops and autograd.

Forward and backward are separate registry ops ("rms_norm_fwd", "rms_norm_bwd",
"layer_norm_fwd", "layer_norm_bwd") so a plugin can replace either. Every implementation
takes contiguous rows x (N, H) and computes in fp32.

add_rms_norm / add_layer_norm fuse a pre-norm block's residual add into the norm after it:
s = x + residual and norm(s) from one read of x and residual ("add_rms_norm_fwd",
"add_layer_norm_fwd"), and in the backward the residual stream's gradient added to dx in
the norm's own kernel ("rms_norm_bwd_add", "layer_norm_bwd_add").
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from portkit.ops import registry
from portkit.ops._op import (as_rows, call, check_residual, check_vector, custom_op, eager_native, n_rows, pick,
                             with_autograd)


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


@registry.reference("add_rms_norm_fwd")
def add_rms_norm_fwd(x: Tensor, residual: Tensor, weight: Optional[Tensor], eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """-> s = x + residual (x.dtype), then rms_norm_fwd(s): s, y, rstd.
    Traffic: reads x and residual (2*N*H); writes s and y (2*N*H) and rstd (N)."""
    s = x + residual
    return (s, *rms_norm_fwd(s, weight, eps))


@registry.reference("add_layer_norm_fwd")
def add_layer_norm_fwd(x: Tensor, residual: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                       eps: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """-> s = x + residual (x.dtype), then layer_norm_fwd(s): s, y, mean, rstd."""
    s = x + residual
    return (s, *layer_norm_fwd(s, weight, bias, eps))


@registry.reference("rms_norm_bwd_add")
def rms_norm_bwd_add(dy: Tensor, x: Tensor, weight: Optional[Tensor], rstd: Tensor,
                     dres: Tensor) -> tuple[Tensor, Tensor]:
    """rms_norm_bwd with dres (N, H), the gradient the residual stream already carries, added to dx.
    Traffic: reads dy, x and dres (3*N*H); writes dx (N*H) and dw (H)."""
    dx, dw = rms_norm_bwd(dy, x, weight, rstd)
    return dx + dres, dw


@registry.reference("layer_norm_bwd_add")
def layer_norm_bwd_add(dy: Tensor, x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], mean: Tensor,
                       rstd: Tensor, dres: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """layer_norm_bwd with dres (N, H) added to dx."""
    dx, dw, db = layer_norm_bwd(dy, x, weight, bias, mean, rstd)
    return dx + dres, dw, db


def _grad_like(p: Optional[Tensor], x: Tensor) -> Tensor:
    return p.new_empty(p.shape) if p is not None else x.new_empty(0)


# -- RMSNorm custom op --------------------------------------------------------------------
# Each norm's custom op takes an optional residual: with one it also returns s = x + residual
# (an empty tensor without), saves s instead of x, and its backward adds the gradient of s to dx.
def _s_like(x: Tensor, residual: Optional[Tensor]) -> Tensor:
    return x.new_empty(x.shape) if residual is not None else x.new_empty(0)


@custom_op("portkit::rms_norm")
def _rms_norm(x: Tensor, weight: Optional[Tensor], eps: float,
              residual: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Tensor]:
    if residual is None:
        y, rstd = pick("rms_norm_fwd", rms_norm_fwd, x)(as_rows(x), weight, eps)
        return y.view(x.shape), rstd, x.new_empty(0)
    s, y, rstd = pick("add_rms_norm_fwd", add_rms_norm_fwd, x)(as_rows(x), as_rows(residual), weight, eps)
    return y.view(x.shape), rstd, s.view(x.shape)


@_rms_norm.register_fake
def _(x, weight, eps, residual=None):
    return x.new_empty(x.shape), x.new_empty(n_rows(x), dtype=torch.float32), _s_like(x, residual)


@custom_op("portkit::rms_norm_backward")
def _rms_norm_backward(dy: Tensor, x: Tensor, weight: Optional[Tensor], rstd: Tensor,
                       dres: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    rows = as_rows(dy), as_rows(x), weight, rstd
    if dres is None:
        dx, dw = pick("rms_norm_bwd", rms_norm_bwd, x)(*rows)
    else:
        dx, dw = pick("rms_norm_bwd_add", rms_norm_bwd_add, x)(*rows, as_rows(dres))
    return dx.view(x.shape), dw


@_rms_norm_backward.register_fake
def _(dy, x, weight, rstd, dres=None):
    return x.new_empty(x.shape), _grad_like(weight, x)


def _rms_setup(ctx, inputs, output):
    x, weight, _, residual = inputs
    ctx.fused = residual is not None
    ctx.save_for_backward(output[2] if ctx.fused else x, weight, output[1])


def _rms_backward(ctx, dy, _drstd, ds):
    x, weight, rstd = ctx.saved_tensors
    dx, dw = call(ctx, _rms_norm_backward)(dy, x, weight, rstd, ds if ctx.fused else None)
    return dx, (dw if weight is not None else None), None, (dx if ctx.fused else None)


_rms_norm_fn = with_autograd(_rms_norm, _rms_backward, _rms_setup)


def rms_norm(x: Tensor, weight: Optional[Tensor] = None, eps: float = 1e-6) -> Tensor:
    """y = x * rsqrt(mean(x^2) + eps) * weight over the last dim, in fp32, returned in x.dtype."""
    check_vector("weight", weight, x.shape[-1], "rms_norm")
    if eager_native("rms_norm_fwd", x, weight):
        return F.rms_norm(x, x.shape[-1:], weight, eps)
    return _rms_norm_fn(x, weight, eps, None)[0]


def add_rms_norm(x: Tensor, residual: Optional[Tensor], weight: Optional[Tensor] = None,
                 eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """(s, rms_norm(s, weight, eps)) with s = x + residual in x.dtype: a pre-norm block's
    residual add and the next norm in one kernel, forward and backward. residual None: (x, rms_norm(x))."""
    check_vector("weight", weight, x.shape[-1], "add_rms_norm")
    check_residual(x, residual, "add_rms_norm")
    if eager_native("add_rms_norm_fwd", x, residual, weight):
        s = x + residual if residual is not None else x
        return s, F.rms_norm(s, x.shape[-1:], weight, eps)
    y, _, s = _rms_norm_fn(x, weight, eps, residual)
    return (s if residual is not None else x), y


# -- LayerNorm custom op ------------------------------------------------------------------
@custom_op("portkit::layer_norm")
def _layer_norm(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float,
                residual: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    if residual is None:
        y, mean, rstd = pick("layer_norm_fwd", layer_norm_fwd, x)(as_rows(x), weight, bias, eps)
        return y.view(x.shape), mean, rstd, x.new_empty(0)
    fn = pick("add_layer_norm_fwd", add_layer_norm_fwd, x)
    s, y, mean, rstd = fn(as_rows(x), as_rows(residual), weight, bias, eps)
    return y.view(x.shape), mean, rstd, s.view(x.shape)


@_layer_norm.register_fake
def _(x, weight, bias, eps, residual=None):
    n = n_rows(x)
    return (x.new_empty(x.shape), x.new_empty(n, dtype=torch.float32), x.new_empty(n, dtype=torch.float32),
            _s_like(x, residual))


@custom_op("portkit::layer_norm_backward")
def _layer_norm_backward(dy: Tensor, x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                         mean: Tensor, rstd: Tensor, dres: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Tensor]:
    rows = as_rows(dy), as_rows(x), weight, bias, mean, rstd
    if dres is None:
        dx, dw, db = pick("layer_norm_bwd", layer_norm_bwd, x)(*rows)
    else:
        dx, dw, db = pick("layer_norm_bwd_add", layer_norm_bwd_add, x)(*rows, as_rows(dres))
    return dx.view(x.shape), dw, db


@_layer_norm_backward.register_fake
def _(dy, x, weight, bias, mean, rstd, dres=None):
    return x.new_empty(x.shape), _grad_like(weight, x), _grad_like(bias, x)


def _ln_setup(ctx, inputs, output):
    x, weight, bias, _, residual = inputs
    ctx.fused = residual is not None
    ctx.save_for_backward(output[3] if ctx.fused else x, weight, bias, output[1], output[2])


def _ln_backward(ctx, dy, _dmean, _drstd, ds):
    x, weight, bias, mean, rstd = ctx.saved_tensors
    dx, dw, db = call(ctx, _layer_norm_backward)(dy, x, weight, bias, mean, rstd, ds if ctx.fused else None)
    return (dx, (dw if weight is not None else None), (db if bias is not None else None), None,
            (dx if ctx.fused else None))


_layer_norm_fn = with_autograd(_layer_norm, _ln_backward, _ln_setup)


def layer_norm(x: Tensor, weight: Optional[Tensor] = None, bias: Optional[Tensor] = None,
               eps: float = 1e-5) -> Tensor:
    """LayerNorm over the last dim in fp32, returned in x.dtype; weight/bias (H,) or None."""
    check_vector("weight", weight, x.shape[-1], "layer_norm")
    check_vector("bias", bias, x.shape[-1], "layer_norm")
    if eager_native("layer_norm_fwd", x, weight, bias):
        return F.layer_norm(x, x.shape[-1:], weight, bias, eps)
    return _layer_norm_fn(x, weight, bias, eps, None)[0]


def add_layer_norm(x: Tensor, residual: Optional[Tensor], weight: Optional[Tensor] = None,
                   bias: Optional[Tensor] = None, eps: float = 1e-5) -> tuple[Tensor, Tensor]:
    """(s, layer_norm(s, weight, bias, eps)) with s = x + residual in x.dtype, fused as
    add_rms_norm; residual None: (x, layer_norm(x))."""
    check_vector("weight", weight, x.shape[-1], "add_layer_norm")
    check_vector("bias", bias, x.shape[-1], "add_layer_norm")
    check_residual(x, residual, "add_layer_norm")
    if eager_native("add_layer_norm_fwd", x, residual, weight, bias):
        s = x + residual if residual is not None else x
        return s, F.layer_norm(s, x.shape[-1:], weight, bias, eps)
    y, _, _, s = _layer_norm_fn(x, weight, bias, eps, residual)
    return (s if residual is not None else x), y
