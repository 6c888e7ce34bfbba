"""Triton kernels for RMSNorm and LayerNorm (CUDA and ROCm) and their host launchers.

Forward: one program per row, the row in registers. Backward: each program walks a run
of rows, writes dx per row and keeps partial dW/dB sums in registers; a second pass sums
the per-program partials (the layer-norm tutorial's scheme, without locks).
The launchers take the same arguments as the references in portkit.ops.norms.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from portkit.ops import norms
from portkit.ops._triton_utils import fits, row_settings, sm_count

PROGRAMS_PER_SM = 4  # backward programs per multiprocessor: enough in flight to saturate memory


@triton.jit
def _rms_fwd_kernel(X, Y, W, RSTD, n_cols, eps, HAS_W: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(X + row * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / n_cols + eps)
    y = x * rstd
    if HAS_W:
        y = y * tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(RSTD + row, rstd)
    tl.store(Y + row * n_cols + cols, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _rms_bwd_kernel(DY, X, W, RSTD, DX, DW_PART, n_rows, n_cols, rows_per_prog,
                    HAS_W: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    if HAS_W:
        w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK], dtype=tl.float32)
    first = pid.to(tl.int64) * rows_per_prog  # 64-bit row offsets: N*H may pass 2**31
    last = tl.minimum(first + rows_per_prog, n_rows)
    for row in range(first, last):
        off = row * n_cols + cols
        dy = tl.load(DY + off, mask=mask, other=0.0).to(tl.float32)
        x = tl.load(X + off, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(RSTD + row)
        xhat = x * rstd
        if HAS_W:
            g = dy * w
        else:
            g = dy
        c = tl.sum(g * xhat, axis=0) / n_cols
        tl.store(DX + off, (rstd * (g - xhat * c)).to(DX.dtype.element_ty), mask=mask)
        dw += dy * xhat
    if HAS_W:
        tl.store(DW_PART + pid * n_cols + cols, dw, mask=mask)


@triton.jit
def _ln_fwd_kernel(X, Y, W, B, MEAN, RSTD, n_cols, eps,
                   HAS_W: tl.constexpr, HAS_B: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(X + row * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=0) / n_cols
    xc = tl.where(mask, x - mean, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=0) / n_cols + eps)
    y = xc * rstd
    if HAS_W:
        y = y * tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_B:
        y = y + tl.load(B + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(MEAN + row, mean)
    tl.store(RSTD + row, rstd)
    tl.store(Y + row * n_cols + cols, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _ln_bwd_kernel(DY, X, W, MEAN, RSTD, DX, DW_PART, DB_PART, n_rows, n_cols, rows_per_prog,
                   HAS_W: tl.constexpr, HAS_B: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    if HAS_W:
        w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK], dtype=tl.float32)
    db = tl.zeros([BLOCK], dtype=tl.float32)
    first = pid.to(tl.int64) * rows_per_prog  # 64-bit row offsets: N*H may pass 2**31
    last = tl.minimum(first + rows_per_prog, n_rows)
    for row in range(first, last):
        off = row * n_cols + cols
        dy = tl.load(DY + off, mask=mask, other=0.0).to(tl.float32)
        x = tl.load(X + off, mask=mask, other=0.0).to(tl.float32)
        mean = tl.load(MEAN + row)
        rstd = tl.load(RSTD + row)
        xhat = tl.where(mask, (x - mean) * rstd, 0.0)
        if HAS_W:
            g = dy * w
        else:
            g = dy
        c1 = tl.sum(xhat * g, axis=0) / n_cols
        c2 = tl.sum(g, axis=0) / n_cols
        tl.store(DX + off, (rstd * (g - c2 - xhat * c1)).to(DX.dtype.element_ty), mask=mask)
        dw += dy * xhat
        db += dy
    if HAS_W:
        tl.store(DW_PART + pid * n_cols + cols, dw, mask=mask)
    if HAS_B:
        tl.store(DB_PART + pid * n_cols + cols, db, mask=mask)


def _bwd_grid(x: torch.Tensor) -> tuple[int, int]:
    """(programs, rows per program) for the backward kernels."""
    n = x.shape[0]
    programs = max(1, min(n, sm_count(x.device) * PROGRAMS_PER_SM))
    per = triton.cdiv(n, programs)
    return triton.cdiv(n, per), per


def _partial(x: torch.Tensor, programs: int, wanted: bool) -> torch.Tensor:
    if not wanted:
        return x.new_empty(0, dtype=torch.float32)
    return x.new_empty((programs, x.shape[1]), dtype=torch.float32)


def _reduce(part: torch.Tensor, p: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    return part.sum(0).to(p.dtype) if p is not None else x.new_empty(0)


def _dummy(x: torch.Tensor) -> torch.Tensor:
    return x.new_empty(1)


def rms_norm_fwd(x, weight, eps):
    if not fits("rms_norm", x.shape[1]):
        return norms.rms_norm_fwd(x, weight, eps)
    n, h = x.shape
    y = torch.empty_like(x)
    rstd = x.new_empty(n, dtype=torch.float32)
    block, warps = row_settings(h)
    w = weight if weight is not None else _dummy(x)
    _rms_fwd_kernel[(n,)](x, y, w, rstd, h, eps, HAS_W=weight is not None, BLOCK=block, num_warps=warps)
    return y, rstd


def rms_norm_bwd(dy, x, weight, rstd):
    if not fits("rms_norm", x.shape[1]):
        return norms.rms_norm_bwd(dy, x, weight, rstd)
    n, h = x.shape
    dx = torch.empty_like(x)
    programs, per = _bwd_grid(x)
    dw_part = _partial(x, programs, weight is not None)
    block, warps = row_settings(h)
    w = weight if weight is not None else _dummy(x)
    _rms_bwd_kernel[(programs,)](dy, x, w, rstd, dx, dw_part, n, h, per,
                                 HAS_W=weight is not None, BLOCK=block, num_warps=warps)
    return dx, _reduce(dw_part, weight, x)


def layer_norm_fwd(x, weight, bias, eps):
    if not fits("layer_norm", x.shape[1]):
        return norms.layer_norm_fwd(x, weight, bias, eps)
    n, h = x.shape
    y = torch.empty_like(x)
    mean = x.new_empty(n, dtype=torch.float32)
    rstd = x.new_empty(n, dtype=torch.float32)
    block, warps = row_settings(h)
    w = weight if weight is not None else _dummy(x)
    b = bias if bias is not None else _dummy(x)
    _ln_fwd_kernel[(n,)](x, y, w, b, mean, rstd, h, eps, HAS_W=weight is not None,
                         HAS_B=bias is not None, BLOCK=block, num_warps=warps)
    return y, mean, rstd


def layer_norm_bwd(dy, x, weight, bias, mean, rstd):
    if not fits("layer_norm", x.shape[1]):
        return norms.layer_norm_bwd(dy, x, weight, bias, mean, rstd)
    n, h = x.shape
    dx = torch.empty_like(x)
    programs, per = _bwd_grid(x)
    dw_part = _partial(x, programs, weight is not None)
    db_part = _partial(x, programs, bias is not None)
    block, warps = row_settings(h)
    w = weight if weight is not None else _dummy(x)
    _ln_bwd_kernel[(programs,)](dy, x, w, mean, rstd, dx, dw_part, db_part, n, h, per,
                                HAS_W=weight is not None, HAS_B=bias is not None,
                                BLOCK=block, num_warps=warps)
    return dx, _reduce(dw_part, weight, x), _reduce(db_part, bias, x)
