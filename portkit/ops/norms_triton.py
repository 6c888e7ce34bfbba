"""Triton kernels for RMSNorm and LayerNorm (CUDA and ROCm) and their host launchers.

Forward: one program per row, the row in registers. Backward: each program walks a run
of rows (the next row's loads, its mean and rstd included, issued before this row's
reductions), writes dx per row and keeps partial dW/dB sums in registers; torch's sum
adds the per-program partials up in the parameters' dtype (the layer-norm tutorial's
scheme, without locks).
The launchers take the same arguments as the references in portkit.ops.norms.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from portkit.ops import norms
from portkit.ops._op import launchable
from portkit.ops._triton_utils import dummy, fits, is_hip, or_dummy, row_settings, sm_count

# Backward launch shape from an H100 sweep (bf16, rows of 1024 to 8192): 16 elements of a row
# per thread and about 16 warps per multiprocessor were the fastest at every width.
BWD_ELEMS_PER_THREAD, BWD_WARPS_PER_SM = 16, 16


@triton.jit
def _rms_fwd_kernel(X, R, S, Y, W, RSTD, n_cols, eps, HAS_RES: tl.constexpr, HAS_W: tl.constexpr,
                    BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = _load_input(X, R, S, row * n_cols + cols, mask, HAS_RES)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / n_cols + eps)
    y = x * rstd
    if HAS_W:
        y = y * tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(RSTD + row, rstd)
    tl.store(Y + row * n_cols + cols, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _load_input(X, R, S, off, mask, HAS_RES: tl.constexpr):
    """A row of x in fp32; with HAS_RES the row of s = x + r, stored to S in its dtype and
    normalized as stored (the unfused add's rounding)."""
    x = tl.load(X + off, mask=mask, other=0.0)
    if HAS_RES:
        x = (x.to(tl.float32) + tl.load(R + off, mask=mask, other=0.0).to(tl.float32)).to(S.dtype.element_ty)
        tl.store(S + off, x, mask=mask)
    return x.to(tl.float32)


@triton.jit
def _load_rows(DY, X, row, n_cols, cols, mask):
    """dy and x of one row (zeros where masked), in their storage dtype."""
    off = row * n_cols + cols
    return tl.load(DY + off, mask=mask, other=0.0), tl.load(X + off, mask=mask, other=0.0)


@triton.jit
def _ln_fwd_kernel(X, R, S, Y, W, B, MEAN, RSTD, n_cols, eps, HAS_RES: tl.constexpr,
                   HAS_W: tl.constexpr, HAS_B: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = _load_input(X, R, S, row * n_cols + cols, mask, HAS_RES)
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
def _norm_bwd_kernel(DY, X, W, MEAN, RSTD, DRES, DX, PART, n_rows, n_cols, rows_per_prog,
                     CENTERED: tl.constexpr, HAS_DRES: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
                     BLOCK: tl.constexpr):
    """LayerNorm's backward; with CENTERED=False (no mean, no bias) RMSNorm's. With HAS_DRES
    the residual stream's gradient DRES is added to dx (the fused residual add's backward)."""
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    if HAS_W:
        w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK], dtype=tl.float32)
    db = tl.zeros([BLOCK], dtype=tl.float32)
    first = pid.to(tl.int64) * rows_per_prog  # 64-bit row offsets: N*H may pass 2**31
    last = tl.minimum(first + rows_per_prog, n_rows)
    dy_next, x_next = _load_rows(DY, X, first, n_cols, cols, mask & (first < last))
    rstd_next = tl.load(RSTD + first, mask=first < last, other=0.0)
    if CENTERED:
        mean_next = tl.load(MEAN + first, mask=first < last, other=0.0)
    for row in range(first, last):
        dy, x, rstd = dy_next.to(tl.float32), x_next.to(tl.float32), rstd_next
        if CENTERED:
            x = x - mean_next
        # the next row's loads are issued before this row's reductions: memory stays busy
        more = row + 1 < last
        dy_next, x_next = _load_rows(DY, X, row + 1, n_cols, cols, mask & more)
        rstd_next = tl.load(RSTD + row + 1, mask=more, other=0.0)
        if CENTERED:
            mean_next = tl.load(MEAN + row + 1, mask=more, other=0.0)
        xhat = tl.where(mask, x * rstd, 0.0)
        if HAS_W:
            g = dy * w
        else:
            g = dy
        dx = g - xhat * (tl.sum(xhat * g, axis=0) / n_cols)
        if CENTERED:
            dx = dx - tl.sum(g, axis=0) / n_cols
        dx = rstd * dx
        if HAS_DRES:
            dx += tl.load(DRES + row * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(DX + row * n_cols + cols, dx.to(DX.dtype.element_ty), mask=mask)
        dw += dy * xhat
        db += dy
    if HAS_W:  # partials: slab 0 dW, then dB (slab 0 when there is no weight)
        tl.store(PART + pid * n_cols + cols, dw, mask=mask)
    if HAS_B:
        tl.store(PART + (HAS_W * tl.num_programs(0) + pid) * n_cols + cols, db, mask=mask)


def _bwd_shape(x: torch.Tensor) -> tuple[int, int, int, int]:
    """(programs, rows per program, BLOCK, num_warps) of the backward kernel."""
    n, h = x.shape
    block = triton.next_power_of_2(h)
    lanes = 64 if is_hip() else 32
    warps = min(max(2, block // (BWD_ELEMS_PER_THREAD * lanes)), 16 if is_hip() else 32)
    programs = max(1, min(n, sm_count(x.device) * max(2, BWD_WARPS_PER_SM // warps)))
    per = triton.cdiv(n, programs)
    return triton.cdiv(n, per), per, block, warps


def _partials(x: torch.Tensor, programs: int, slabs: int) -> torch.Tensor:
    """fp32 buffer for `slabs` per-program partial sums (dW, dB): (slabs, programs, H)."""
    return x.new_empty((slabs, programs, x.shape[1]), dtype=torch.float32)


def _param_grads(part: torch.Tensor, params: list, x: torch.Tensor) -> list[torch.Tensor]:
    """Column sums of the partials for each present param (in its dtype); empty for absent ones.

    torch's sum, as Liger-Kernel's norms do: on the H200 a second Triton launch here cost about
    300 us of host time per backward on the autograd engine's thread (256x4096: 593 us a
    fwd+bwd call with it, 299 us with torch's sum; the same launch costs 14 us on the main thread)."""
    sums = iter(part.sum(1))
    return [next(sums).to(p.dtype) if p is not None else x.new_empty(0) for p in params]


def rms_norm_fwd(x, weight, eps):
    if not fits("rms_norm", x.shape[1]):
        return norms.rms_norm_fwd(x, weight, eps)
    return _rms_fwd(x, None, weight, eps)[1:]


def add_rms_norm_fwd(x, residual, weight, eps):
    if not fits("rms_norm", x.shape[1]):
        return norms.add_rms_norm_fwd(x, residual, weight, eps)
    return _rms_fwd(x, residual, weight, eps)


def _rms_fwd(x, residual, weight, eps):
    """-> s (x + residual; a 1-element dummy without residual), y, rstd."""
    n, h = x.shape
    y = torch.empty_like(x)
    s = torch.empty_like(x) if residual is not None else dummy(x)
    rstd = x.new_empty(n, dtype=torch.float32)
    block, warps = row_settings(h)
    launchable(_rms_fwd_kernel)[(n,)](x, or_dummy(residual, x), s, y, or_dummy(weight, x), rstd, h, eps,
                                      HAS_RES=residual is not None, HAS_W=weight is not None, BLOCK=block,
                                      num_warps=warps)
    return s, y, rstd


def rms_norm_bwd(dy, x, weight, rstd):
    if not fits("rms_norm", x.shape[1]):
        return norms.rms_norm_bwd(dy, x, weight, rstd)
    return _norm_bwd(dy, x, weight, None, rstd, rstd)[:2]


def rms_norm_bwd_add(dy, x, weight, rstd, dres):
    if not fits("rms_norm", x.shape[1]):
        return norms.rms_norm_bwd_add(dy, x, weight, rstd, dres)
    return _norm_bwd(dy, x, weight, None, rstd, rstd, dres=dres)[:2]


def layer_norm_fwd(x, weight, bias, eps):
    if not fits("layer_norm", x.shape[1]):
        return norms.layer_norm_fwd(x, weight, bias, eps)
    return _ln_fwd(x, None, weight, bias, eps)[1:]


def add_layer_norm_fwd(x, residual, weight, bias, eps):
    if not fits("layer_norm", x.shape[1]):
        return norms.add_layer_norm_fwd(x, residual, weight, bias, eps)
    return _ln_fwd(x, residual, weight, bias, eps)


def _ln_fwd(x, residual, weight, bias, eps):
    """-> s (x + residual; a 1-element dummy without residual), y, mean, rstd."""
    n, h = x.shape
    y = torch.empty_like(x)
    s = torch.empty_like(x) if residual is not None else dummy(x)
    mean = x.new_empty(n, dtype=torch.float32)
    rstd = x.new_empty(n, dtype=torch.float32)
    block, warps = row_settings(h)
    launchable(_ln_fwd_kernel)[(n,)](x, or_dummy(residual, x), s, y, or_dummy(weight, x), or_dummy(bias, x),
                                     mean, rstd, h, eps, HAS_RES=residual is not None, HAS_W=weight is not None,
                                     HAS_B=bias is not None, BLOCK=block, num_warps=warps)
    return s, y, mean, rstd


def layer_norm_bwd(dy, x, weight, bias, mean, rstd):
    if not fits("layer_norm", x.shape[1]):
        return norms.layer_norm_bwd(dy, x, weight, bias, mean, rstd)
    return _norm_bwd(dy, x, weight, bias, mean, rstd, centered=True)


def layer_norm_bwd_add(dy, x, weight, bias, mean, rstd, dres):
    if not fits("layer_norm", x.shape[1]):
        return norms.layer_norm_bwd_add(dy, x, weight, bias, mean, rstd, dres)
    return _norm_bwd(dy, x, weight, bias, mean, rstd, centered=True, dres=dres)


def _norm_bwd(dy, x, weight, bias, mean, rstd, centered=False, dres=None):
    """-> dx (+ dres), dw, db (empty when weight/bias is None); `mean` is unread when not centered."""
    n, h = x.shape
    dx = torch.empty_like(x)
    programs, per, block, warps = _bwd_shape(x)
    part = _partials(x, programs, int(weight is not None) + int(bias is not None))
    launchable(_norm_bwd_kernel)[(programs,)](dy, x, or_dummy(weight, x), mean, rstd, or_dummy(dres, x), dx, part,
                                              n, h, per, CENTERED=centered, HAS_DRES=dres is not None,
                                              HAS_W=weight is not None, HAS_B=bias is not None,
                                              BLOCK=block, num_warps=warps)
    return (dx, *_param_grads(part, [weight, bias], x))
