"""Triton kernels for the scaled masked softmax (CUDA and ROCm) and their host launchers.

One program per row of Tk, the row in registers; the mask is read through broadcast strides
(never expanded in memory) and the causal mask computed from indices.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from portkit.ops import softmax
from portkit.ops._op import launchable
from portkit.ops._triton_utils import fits, row_settings

MAX_TK = 32768


@triton.jit
def _softmax_fwd_kernel(X, M, Y, n_heads, Tq, Tk, scale, smb, smh, smq, smk,
                        HAS_MASK: tl.constexpr, CAUSAL: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    i = row % Tq
    cols = tl.arange(0, BLOCK)
    keep = cols < Tk
    if CAUSAL:
        keep = keep & (cols <= i)
    if HAS_MASK:
        b = row // (n_heads * Tq)
        h = (row // Tq) % n_heads
        m = tl.load(M + b * smb + h * smh + i * smq + cols * smk, mask=cols < Tk, other=1)
        keep = keep & (m == 0)
    x = tl.load(X + row * Tk + cols, mask=cols < Tk, other=0.0).to(tl.float32) * scale
    x = tl.where(keep, x, float("-inf"))
    mx = tl.max(x, axis=0)
    mx = tl.where(mx == float("-inf"), 0.0, mx)  # fully masked row
    e = tl.where(keep, tl.exp(x - mx), 0.0)
    total = tl.sum(e, axis=0)
    total = tl.where(total == 0.0, 1.0, total)
    tl.store(Y + row * Tk + cols, (e / total).to(Y.dtype.element_ty), mask=cols < Tk)


@triton.jit
def _softmax_bwd_kernel(DY, Y, DX, Tk, scale, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < Tk
    y = tl.load(Y + row * Tk + cols, mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(DY + row * Tk + cols, mask=mask, other=0.0).to(tl.float32)
    dx = scale * y * (dy - tl.sum(dy * y, axis=0))
    tl.store(DX + row * Tk + cols, dx.to(DX.dtype.element_ty), mask=mask)


def softmax_fwd(x, mask, scale, causal):
    B, nh, Tq, Tk = x.shape
    if not fits("scaled_masked_softmax", Tk, MAX_TK):
        return softmax.softmax_fwd(x, mask, scale, causal)
    y = torch.empty_like(x)
    if mask is not None:
        m = mask.expand(x.shape)
        m, strides = m.view(torch.uint8), m.stride()
    else:
        m, strides = x.new_empty(1, dtype=torch.uint8), (0, 0, 0, 0)
    block, warps = row_settings(Tk)
    launchable(_softmax_fwd_kernel)[(B * nh * Tq,)](x, m, y, nh, Tq, Tk, scale, *strides, HAS_MASK=mask is not None,
                                                    CAUSAL=causal, BLOCK=block, num_warps=warps)
    return y


def softmax_bwd(dy, y, scale):
    Tk = y.shape[-1]
    if not fits("scaled_masked_softmax", Tk, MAX_TK):
        return softmax.softmax_bwd(dy, y, scale)
    dx = torch.empty_like(y)
    block, warps = row_settings(Tk)
    launchable(_softmax_bwd_kernel)[(y.numel() // Tk,)](dy, y, dx, Tk, scale, BLOCK=block, num_warps=warps)
    return dx
