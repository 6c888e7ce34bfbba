"""Triton kernels for bias+GeLU and packed SwiGLU (CUDA and ROCm) and their host launchers.

SwiGLU: elementwise kernels over the flattened tensor. bias_gelu: (rows, cols) tiles, so the
bias is loaded once per tile; its gradient is summed per program over a run of row tiles (in
a tile-shaped accumulator, reduced across rows once at the end: a reduction per tile cost a
block-wide barrier each step) and the partials are summed by torch. GeLU is computed as
z * sigmoid(2u), one exp and one division, which is (1 + tanh(u)) z / 2.
The launchers take the same arguments as the references in portkit.ops.activations.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from portkit.ops._op import launchable
from portkit.ops._triton_utils import or_dummy, sm_count

BLOCK = 4096         # elements per program of the elementwise kernels
WARPS = 8
# bias_gelu tiles (elements, widest): an H200 sweep at 16384 rows of 3072 to 8192 (bf16); the
# backward's narrow tiles on more programs beat 4096-element ones by 10-20%
FWD_TILE, FWD_COLS = 4096, 1024
BWD_TILE, BWD_COLS = 1024, 512
PROGRAMS_PER_SM = 8

@triton.jit
def _sigmoid(g):
    e = tl.exp(-tl.abs(g))  # never overflows
    return tl.where(g >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@triton.jit
def _gelu_s(z):
    # sigmoid(2u) = (1 + tanh(u)) / 2 with u = sqrt(2/pi) (z + 0.044715 z^3): gelu_tanh(z) = z * s.
    # exp(-2u) overflows to inf for very negative z, and s is then 0 as it should be
    return 1.0 / (1.0 + tl.exp(-1.5957691216057308 * z * (1.0 + 0.044715 * z * z)))


@triton.jit
def _bias_gelu_fwd_kernel(X, B, Y, n_rows, n_cols, HAS_B: tl.constexpr, ROWS: tl.constexpr, COLS: tl.constexpr):
    # a (ROWS, COLS) tile per program: the bias is loaded once per tile, no per-element modulo,
    # and the offsets inside the tile are 32-bit (the row base is the only 64-bit product)
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.program_id(1) * COLS + tl.arange(0, COLS)
    cmask = cols < n_cols
    mask = (rows < n_rows)[:, None] & cmask[None, :]
    base = (tl.program_id(0) * ROWS).to(tl.int64) * n_cols
    tile = tl.arange(0, ROWS)[:, None] * n_cols + cols[None, :]
    z = tl.load(X + base + tile, mask=mask, other=0.0).to(tl.float32)
    if HAS_B:
        z += tl.load(B + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    tl.store(Y + base + tile, (z * _gelu_s(z)).to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _bias_gelu_bwd_kernel(DY, X, B, DX, DB_PART, n_rows, n_cols, rows_per_prog,
                          HAS_B: tl.constexpr, ROWS: tl.constexpr, COLS: tl.constexpr):
    pid_r = tl.program_id(0)
    cols = tl.program_id(1) * COLS + tl.arange(0, COLS)
    cmask = cols < n_cols
    if HAS_B:
        b = tl.load(B + cols, mask=cmask, other=0.0).to(tl.float32)
    acc = tl.zeros([ROWS, COLS], dtype=tl.float32)  # summed over rows once, after the loop
    first = pid_r.to(tl.int64) * rows_per_prog
    last = tl.minimum(first + rows_per_prog, n_rows)
    tile = tl.arange(0, ROWS)[:, None] * n_cols + cols[None, :]
    for r0 in range(first, last, ROWS):
        base = r0 * n_cols
        mask = ((r0 + tl.arange(0, ROWS)) < last)[:, None] & cmask[None, :]
        z = tl.load(X + base + tile, mask=mask, other=0.0).to(tl.float32)
        if HAS_B:
            z += b[None, :]
        s = _gelu_s(z)  # d/dz z*s = s + z * s(1-s) * 2 sqrt(2/pi) (1 + 3 * 0.044715 z^2)
        dgelu = s + z * s * (1.0 - s) * 1.5957691216057308 * (1.0 + 0.134145 * z * z)
        dz = tl.load(DY + base + tile, mask=mask, other=0.0).to(tl.float32) * dgelu
        tl.store(DX + base + tile, dz.to(DX.dtype.element_ty), mask=mask)
        if HAS_B:
            acc += tl.where(mask, dz, 0.0)
    if HAS_B:
        tl.store(DB_PART + pid_r * n_cols + cols, tl.sum(acc, axis=0), mask=cmask)


@triton.jit
def _swiglu_fwd_kernel(X, Y, numel, n_cols, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    row = offs // n_cols
    src = offs + row * n_cols  # gate at row*2H + col, up at gate + H
    g = tl.load(X + src, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(X + src + n_cols, mask=mask, other=0.0).to(tl.float32)
    y = g * _sigmoid(g) * u
    tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _swiglu_bwd_kernel(DY, X, DX, numel, n_cols, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    row = offs // n_cols
    src = offs + row * n_cols
    g = tl.load(X + src, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(X + src + n_cols, mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
    s = _sigmoid(g)
    dg = dy * u * s * (1.0 + g * (1.0 - s))
    du = dy * g * s
    tl.store(DX + src, dg.to(DX.dtype.element_ty), mask=mask)
    tl.store(DX + src + n_cols, du.to(DX.dtype.element_ty), mask=mask)


def bias_gelu_fwd(x, bias):
    n, h = x.shape
    y = torch.empty_like(x)
    rows, cols = _tile(h, FWD_TILE, FWD_COLS)
    launchable(_bias_gelu_fwd_kernel)[(triton.cdiv(n, rows), triton.cdiv(h, cols))](
        x, or_dummy(bias, x), y, n, h, HAS_B=bias is not None, ROWS=rows, COLS=cols, num_warps=WARPS)
    return y


def _tile(n_cols: int, elems: int, widest: int) -> tuple[int, int]:
    """(rows, cols) of a tile of about `elems` elements, at most `widest` columns wide."""
    cols = min(triton.next_power_of_2(n_cols), widest)
    return max(1, elems // cols), cols


def _row_programs(x: torch.Tensor, rows: int, col_blocks: int) -> tuple[int, int]:
    """(row programs, rows per program), rows per program a multiple of the row tile."""
    n = x.shape[0]
    want = max(1, sm_count(x.device) * PROGRAMS_PER_SM // col_blocks)
    programs = max(1, min(want, triton.cdiv(n, rows)))
    per = triton.cdiv(triton.cdiv(n, programs), rows) * rows
    return triton.cdiv(n, per), per


def bias_gelu_bwd(dy, x, bias):
    n, h = x.shape
    dx = torch.empty_like(x)
    rows, cols = _tile(h, BWD_TILE, BWD_COLS)
    col_blocks = triton.cdiv(h, cols)
    programs, per = _row_programs(x, rows, col_blocks)
    has_b = bias is not None
    db_part = x.new_empty((programs, h) if has_b else (0,), dtype=torch.float32)
    launchable(_bias_gelu_bwd_kernel)[(programs, col_blocks)](dy, x, or_dummy(bias, x), dx, db_part, n, h, per,
                                                              HAS_B=has_b, ROWS=rows, COLS=cols, num_warps=WARPS)
    db = db_part.sum(0).to(bias.dtype) if has_b else x.new_empty(0)
    return dx, db


def swiglu_fwd(x):
    n, h2 = x.shape
    y = x.new_empty((n, h2 // 2))
    grid = (triton.cdiv(y.numel(), BLOCK),)
    launchable(_swiglu_fwd_kernel)[grid](x, y, y.numel(), h2 // 2, BLOCK=BLOCK, num_warps=WARPS)
    return y


def swiglu_bwd(dy, x):
    dx = torch.empty_like(x)
    grid = (triton.cdiv(dy.numel(), BLOCK),)
    launchable(_swiglu_bwd_kernel)[grid](dy, x, dx, dy.numel(), x.shape[1] // 2, BLOCK=BLOCK, num_warps=WARPS)
    return dx
