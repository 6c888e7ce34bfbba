"""LayerNorm through PyTorch's own fused kernels (aten.native_layer_norm and its backward).

On an H100 (bf16, 16384 x 2048, 2026-11-23) these reach 1483 GB/s forward+backward against
316 GB/s for portkit's Triton LayerNorm, whose backward is the slow part: while that holds,
dispatch prefers them on devices where torch ships them (CUDA and ROCm). Same signatures as
the references in norms.py.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def layer_norm_fwd(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                   eps: float) -> tuple[Tensor, Tensor, Tensor]:
    y, mean, rstd = torch.ops.aten.native_layer_norm(x, [x.shape[-1]], weight, bias, eps)
    return y, mean.reshape(-1).float(), rstd.reshape(-1).float()


def layer_norm_bwd(dy: Tensor, x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                   mean: Tensor, rstd: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    n = x.shape[0]
    dx, dw, db = torch.ops.aten.native_layer_norm_backward(
        dy, x, [x.shape[-1]], mean.view(n, 1), rstd.view(n, 1), weight, bias,
        [True, weight is not None, bias is not None])
    return dx, (dw if dw is not None else x.new_empty(0)), (db if db is not None else x.new_empty(0))
