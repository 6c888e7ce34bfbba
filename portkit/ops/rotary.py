"""Rotary position embedding, half-rotation form (GPT-NeoX / LLaMA).

Registry ops: "rotary_fwd" (x, cos, sin) -> y and "rotary_bwd" (dy, cos, sin) -> dx, with
x (B, nh, T, hs) of any strides whose last one is 1, and cos/sin (T, hs//2) fp32 tables.
The backward is the inverse rotation. cos and sin get no gradient.
"""
from __future__ import annotations

import torch
from torch import Tensor

from portkit.ops import registry
from portkit.ops._op import call, custom_op, pick, with_autograd


def rotary_tables(T: int, hs: int, base: float = 10000.0,
                  device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """cos, sin (T, hs//2) fp32 for positions 0..T-1."""
    if hs % 2:
        raise ValueError(f"rotary_tables: head size {hs} must be even")
    inv_freq = 1.0 / (base ** (torch.arange(0, hs, 2, device=device, dtype=torch.float32) / hs))
    angles = torch.outer(torch.arange(T, device=device, dtype=torch.float32), inv_freq)  # (T, hs//2)
    return angles.cos(), angles.sin()


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    x1, x2 = x.float().chunk(2, dim=-1)  # (B, nh, T, hs//2) each
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


@registry.reference("rotary_fwd")
def rotary_fwd(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Traffic: reads x (B*nh*T*hs) and the tables (T*hs); writes y (B*nh*T*hs)."""
    return _rotate(x, cos, sin)


@registry.reference("rotary_bwd")
def rotary_bwd(dy: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """The inverse rotation. Traffic: reads dy and the tables; writes dx."""
    return _rotate(dy, cos, -sin)


def _rotation_op(name: str, registry_op: str, reference):
    """The custom op portkit::<name> (t, cos, sin) -> like t: the registry's choice for `registry_op`."""
    @custom_op(f"portkit::{name}")
    def op(t: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        return pick(registry_op, reference, t)(t, cos, sin)

    @op.register_fake
    def _(t, cos, sin):
        return t.new_empty(t.shape)
    return op


_rotary = _rotation_op("rotary", "rotary_fwd", rotary_fwd)
_rotary_backward = _rotation_op("rotary_backward", "rotary_bwd", rotary_bwd)


def _setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[1], inputs[2])


def _backward(ctx, dy):
    cos, sin = ctx.saved_tensors
    return call(ctx, _rotary_backward)(dy, cos, sin), None, None


_rotary_fn = with_autograd(_rotary, _backward, _setup)


def rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x (B, nh, T, hs); cos/sin (T, hs//2) fp32 -> cat(x1*cos - x2*sin, x2*cos + x1*sin)."""
    if x.dim() != 4 or x.shape[-1] % 2:
        raise ValueError(f"rotary: x must be (B, nh, T, hs) with an even hs; got {tuple(x.shape)}")
    want = (x.shape[2], x.shape[3] // 2)
    for name, t in (("cos", cos), ("sin", sin)):
        if tuple(t.shape) != want or t.dtype != torch.float32:
            raise ValueError(f"rotary: {name} is {tuple(t.shape)} {t.dtype}; expected {want} float32 "
                             f"for x of shape {tuple(x.shape)} (see rotary_tables)")
    if x.stride(-1) != 1:
        x = x.contiguous()
    return _rotary_fn(x, cos, sin)
