"""Colossal-AI's compiled `layer_norm` kernel interface, backed by portkit.ops.layer_norm.

Colossal-AI's FusedLayerNormAffineFunction calls
    forward_affine(x, normalized_shape, weight, bias, eps) -> (y, mean, invvar)
    backward_affine(dy, mean, invvar, x, normalized_shape, weight, bias, eps) -> (dx, dw, db)
The forward is portkit's fused op over the flattened normalized dims; the backward is that
op's registered autograd formula, recomputed from x (mean and invvar are kept for the
caller's bookkeeping, as apex returns them).
"""
from __future__ import annotations

import types

import torch


def _flat(x: torch.Tensor, normalized_shape) -> torch.Tensor:
    n = 1
    for d in normalized_shape:
        n *= int(d)
    return x.reshape(*x.shape[: x.dim() - len(normalized_shape)], n)  # (..., H)


def forward_affine(x, normalized_shape, weight, bias, eps):
    import portkit.ops as ops
    xf = _flat(x, normalized_shape)
    y = ops.layer_norm(xf, weight.reshape(-1), bias.reshape(-1), eps).reshape(x.shape)
    x32 = xf.float()
    mean = x32.mean(-1)
    invvar = torch.rsqrt(x32.var(-1, unbiased=False) + eps)
    return y, mean.reshape(-1), invvar.reshape(-1)


def backward_affine(grad_output, mean, invvar, x, normalized_shape, weight, bias, eps):
    import portkit.ops as ops
    with torch.enable_grad():
        xf = _flat(x, normalized_shape).detach().requires_grad_()
        w = weight.detach().reshape(-1).requires_grad_()
        b = bias.detach().reshape(-1).requires_grad_()
        y = ops.layer_norm(xf, w, b, eps)
        dx, dw, db = torch.autograd.grad(y, (xf, w, b), _flat(grad_output, normalized_shape))
    return dx.reshape(x.shape), dw.reshape(weight.shape), db.reshape(bias.shape)


def layer_norm_module() -> types.ModuleType:
    mod = types.ModuleType("layer_norm", "portkit stand-in for Colossal-AI's compiled layer_norm")
    mod.forward_affine, mod.backward_affine = forward_affine, backward_affine
    mod.portkit = True
    return mod
