"""Fused ops used by the model: portkit.ops when present, else the same formulas in torch.

Transitional: portkit.ops (rms_norm, layer_norm, bias_gelu, swiglu, rotary,
linear_cross_entropy, FusedAdamW) replaces every function here once it is installed.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

try:
    from portkit.ops import (FusedAdamW, bias_gelu, layer_norm, linear_cross_entropy, rms_norm,  # noqa: F401
                             rotary, rotary_tables, swiglu)
    SOURCE = "portkit.ops"
except ImportError:
    SOURCE = "torch"
    warnings.warn("portkit.ops is not installed: the GPT uses plain torch formulas", stacklevel=2)

    def rms_norm(x, weight, eps=1e-6):
        y = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)
        return (y * weight if weight is not None else y).to(x.dtype)

    def layer_norm(x, weight, bias, eps=1e-5):
        return F.layer_norm(x, x.shape[-1:], weight, bias, eps)

    def bias_gelu(x, bias):
        return F.gelu(x + bias if bias is not None else x, approximate="tanh")

    def swiglu(x):
        gate, up = x.chunk(2, dim=-1)
        return F.silu(gate) * up

    def rotary_tables(T, hs, base=10000.0, device=None):
        inv = 1.0 / base ** (torch.arange(0, hs, 2, device=device, dtype=torch.float32) / hs)
        ang = torch.outer(torch.arange(T, device=device, dtype=torch.float32), inv)
        return ang.cos(), ang.sin()

    def rotary(x, cos, sin):
        x1, x2 = x.float().chunk(2, dim=-1)
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).to(x.dtype)

    def linear_cross_entropy(hidden, weight, target, bias=None, ignore_index=-100, reduction="mean"):
        logits = F.linear(hidden, weight, bias).float()
        return F.cross_entropy(logits, target, ignore_index=ignore_index, reduction=reduction)

    FusedAdamW = torch.optim.AdamW

