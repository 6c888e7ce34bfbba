"""Triton kernel for rotary embedding (CUDA and ROCm) and its host launchers.

One program per (batch*head, block of positions): loads both halves of each head vector
and the cos/sin rows once, writes the rotated halves. The backward is the same kernel with
sin negated. x may be strided (e.g. a transposed (B, T, nh, hs) view); the last stride is 1.
"""
from __future__ import annotations

import triton
import triton.language as tl

from portkit.ops._op import launchable

BLOCK_ELEMS = 4096  # elements per program (positions x head size)


@triton.jit
def _rotary_kernel(X, COS, SIN, Y, n_heads, T, half, sxb, sxh, sxt, sign,
                   BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr):
    bh = tl.program_id(0)
    b = bh // n_heads
    h = bh % n_heads
    t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    c = tl.arange(0, BLOCK_H)
    mask = (t < T)[:, None] & (c < half)[None, :]
    src = X + b.to(tl.int64) * sxb + h.to(tl.int64) * sxh + t[:, None].to(tl.int64) * sxt + c[None, :]
    x1 = tl.load(src, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(src + half, mask=mask, other=0.0).to(tl.float32)
    tab = t[:, None] * half + c[None, :]
    cos = tl.load(COS + tab, mask=mask, other=0.0)
    sin = tl.load(SIN + tab, mask=mask, other=0.0) * sign
    dst = Y + bh.to(tl.int64) * T * 2 * half + t[:, None].to(tl.int64) * 2 * half + c[None, :]
    tl.store(dst, (x1 * cos - x2 * sin).to(Y.dtype.element_ty), mask=mask)
    tl.store(dst + half, (x2 * cos + x1 * sin).to(Y.dtype.element_ty), mask=mask)


def _rotate(x, cos, sin, sign):
    if x.stride(-1) != 1:
        x = x.contiguous()
    B, nh, T, hs = x.shape
    half = hs // 2
    y = x.new_empty((B, nh, T, hs))
    block_h = triton.next_power_of_2(half)
    block_t = max(1, min(triton.next_power_of_2(T), BLOCK_ELEMS // (2 * block_h)))
    grid = (B * nh, triton.cdiv(T, block_t))
    launchable(_rotary_kernel)[grid](x, cos.contiguous(), sin.contiguous(), y, nh, T, half,
                                     x.stride(0), x.stride(1), x.stride(2), sign,
                                     BLOCK_T=block_t, BLOCK_H=block_h, num_warps=4)
    return y


def rotary_fwd(x, cos, sin):
    return _rotate(x, cos, sin, 1.0)


def rotary_bwd(dy, cos, sin):
    return _rotate(dy, cos, sin, -1.0)
