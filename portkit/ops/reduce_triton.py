"""Column sums in fp32 (Triton, CUDA and ROCm): the bias gradients of the GeLU MLP's cuBLASLt
path (portkit.ops.mlp).

Each program sums a slab of rows of a block of columns in fp32 registers and writes one
partial row; torch adds the partials up (a few rows per column). At the 1.3B step's shapes on an
H100 (16384 x 8192 and 16384 x 2048 bf16) a pair of them takes 0.126 ms, where torch's sums take
0.141 and inductor's 0.134 (benchmarks/colsum_sweep.py, which picked the launch shape below:
benchmarks/results/colsum-sweep-h100-2026-12-07.log); cuBLASLt's BGRADB epilogue, a kernel of its
own, ran at 1.8 TB/s (benchmarks/results/step-kernels-h100-1.3b-bias-grads-*.log).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from portkit.ops._op import launchable
from portkit.ops._triton_utils import sm_count

BLOCK_ROWS, BLOCK_COLS, WARPS = 32, 128, 8  # benchmarks/colsum_sweep.py's best on an H100
PROGRAMS_PER_SM = 4  # at most, one wave: sm_90 holds 6 at once (38 registers a thread, crosscompile)


@triton.jit
def _column_sum_kernel(X, PART, n_rows, n_cols, rows_per_prog, BLOCK_ROWS: tl.constexpr,
                       BLOCK_COLS: tl.constexpr):
    slab = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_COLS + tl.arange(0, BLOCK_COLS)
    first = slab.to(tl.int64) * rows_per_prog  # 64-bit offsets: N x F may pass 2**31
    last = tl.minimum(first + rows_per_prog, n_rows)
    acc = tl.zeros([BLOCK_ROWS, BLOCK_COLS], dtype=tl.float32)
    for start in range(first, last, BLOCK_ROWS):
        rows = start + tl.arange(0, BLOCK_ROWS)
        mask = (rows[:, None] < last) & (cols[None, :] < n_cols)
        acc += tl.load(X + rows[:, None] * n_cols + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    tl.store(PART + slab * n_cols + cols, tl.sum(acc, axis=0), mask=cols < n_cols)


def column_sum(x: torch.Tensor) -> torch.Tensor:
    """x (N, F) contiguous -> x.sum(0) in fp32, (F,)."""
    n, f = x.shape
    if n == 0:
        return x.new_zeros(f, dtype=torch.float32)
    blocks = triton.cdiv(f, BLOCK_COLS)
    # one wave: a program more than the device holds at once would run alone after the rest
    slabs = max(1, min(triton.cdiv(n, BLOCK_ROWS), PROGRAMS_PER_SM * sm_count(x.device) // blocks))
    per = triton.cdiv(triton.cdiv(n, slabs), BLOCK_ROWS) * BLOCK_ROWS
    slabs = triton.cdiv(n, per)
    part = x.new_empty((slabs, f), dtype=torch.float32)
    launchable(_column_sum_kernel)[(slabs, blocks)](x, part, n, f, per, BLOCK_ROWS=BLOCK_ROWS,
                                                     BLOCK_COLS=BLOCK_COLS, num_warps=WARPS)
    return part.sum(0)
