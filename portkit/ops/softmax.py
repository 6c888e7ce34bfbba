"""Scaled masked softmax over the last dim (Megatron's scaled_masked_softmax).

Registry ops: "softmax_fwd" (x, mask, scale, causal) -> y and "softmax_bwd" (dy, y, scale)
-> dx, with x (B, nh, Tq, Tk) contiguous; mask bool broadcastable to x or None, True =
masked out; causal masks j > i. Computed in fp32; a fully masked row gives zeros.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from portkit.ops import registry
from portkit.ops._op import call, custom_op, pick, with_autograd


def _full_mask(x: Tensor, mask: Optional[Tensor], causal: bool) -> Optional[Tensor]:
    tq, tk = x.shape[-2:]
    if causal:
        upper = torch.ones(tq, tk, dtype=torch.bool, device=x.device).triu(1)  # j > i
        mask = upper if mask is None else mask | upper
    return mask


@registry.reference("softmax_fwd")
def softmax_fwd(x: Tensor, mask: Optional[Tensor], scale: float, causal: bool) -> Tensor:
    """Traffic: reads x (and mask); writes y, same size as x."""
    s = x.float() * scale
    full = _full_mask(x, mask, causal)
    if full is not None:
        s = s.masked_fill(full, float("-inf"))
    m = s.amax(-1, keepdim=True)
    m = torch.where(torch.isinf(m), torch.zeros_like(m), m)  # fully masked row: exp(-inf) = 0
    e = torch.exp(s - m)
    total = e.sum(-1, keepdim=True)
    return (e / torch.where(total == 0, torch.ones_like(total), total)).to(x.dtype)


@registry.reference("softmax_bwd")
def softmax_bwd(dy: Tensor, y: Tensor, scale: float) -> Tensor:
    """dx = scale * y * (dy - sum(dy * y)). Traffic: reads dy and y; writes dx."""
    yf, dyf = y.float(), dy.float()
    return (scale * yf * (dyf - (dyf * yf).sum(-1, keepdim=True))).to(y.dtype)


@custom_op("portkit::scaled_masked_softmax")
def _softmax(x: Tensor, mask: Optional[Tensor], scale: float, causal: bool) -> Tensor:
    return pick("softmax_fwd", softmax_fwd, x)(x, mask, scale, causal)


@_softmax.register_fake
def _(x, mask, scale, causal):
    return x.new_empty(x.shape)


@custom_op("portkit::scaled_masked_softmax_backward")
def _softmax_backward(dy: Tensor, y: Tensor, scale: float) -> Tensor:
    return pick("softmax_bwd", softmax_bwd, y)(dy.contiguous(), y, scale)


@_softmax_backward.register_fake
def _(dy, y, scale):
    return y.new_empty(y.shape)


def _setup(ctx, inputs, output):
    ctx.scale = inputs[2]
    ctx.save_for_backward(output)


def _backward(ctx, dy):
    (y,) = ctx.saved_tensors
    return call(ctx, _softmax_backward)(dy, y, ctx.scale), None, None, None


_softmax_fn = with_autograd(_softmax, _backward, _setup)


def _broadcasts(small: torch.Size, big: torch.Size) -> bool:
    try:
        return torch.broadcast_shapes(small, big) == big
    except RuntimeError:
        return False


def scaled_masked_softmax(x: Tensor, mask: Optional[Tensor], scale: float, causal: bool = False) -> Tensor:
    """softmax(x * scale) over the last dim with masked positions (True) and, if causal,
    j > i excluded; x (B, nh, Tq, Tk)."""
    if x.dim() != 4:
        raise ValueError(f"scaled_masked_softmax: x must be (B, nh, Tq, Tk); got {tuple(x.shape)}")
    if mask is not None:
        if mask.dtype != torch.bool:
            raise ValueError(f"scaled_masked_softmax: mask must be bool (True = masked out); got {mask.dtype}")
        if not _broadcasts(mask.shape, x.shape):
            raise ValueError(f"scaled_masked_softmax: mask {tuple(mask.shape)} does not broadcast "
                             f"to x {tuple(x.shape)}")
    return _softmax_fn(x.contiguous(), mask, float(scale), causal)
