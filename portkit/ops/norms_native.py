"""RMSNorm and LayerNorm through PyTorch's own fused kernels (aten.native_layer_norm,
aten._fused_rms_norm and their backwards), registered as the implementation "aten" on
devices where torch ships them (CUDA and ROCm). Whether they rank above the Triton kernels
is set in portkit.ops.builtin from measurement (docs/benchmarks.md); `PORTKIT_OPS=aten` or
`=triton` picks one for an A/B run. Same signatures as the references in norms.py.
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
    return dx, _or_empty(dw, x), _or_empty(db, x)


def rms_norm_fwd(x: Tensor, weight: Optional[Tensor], eps: float) -> tuple[Tensor, Tensor]:
    y, rstd = torch.ops.aten._fused_rms_norm(x, [x.shape[-1]], weight, eps)
    return y, rstd.reshape(-1).float()


def rms_norm_bwd(dy: Tensor, x: Tensor, weight: Optional[Tensor], rstd: Tensor) -> tuple[Tensor, Tensor]:
    dx, dw = torch.ops.aten._fused_rms_norm_backward(dy, x, [x.shape[-1]], rstd.view(x.shape[0], 1), weight,
                                                     [True, weight is not None])
    return dx, _or_empty(dw, x)


def _or_empty(t: Optional[Tensor], x: Tensor) -> Tensor:
    return t if t is not None else x.new_empty(0)
