"""The GeLU MLP, y = gelu(x @ W1^T + b1) @ W2^T + b2, as one op: apex's FusedDenseGeluDense,
Megatron's bias-GeLU fusion taken into the matmuls.

Registry ops, rows x (N, D), w1 (F, D), w2 (D, F), biases optional:
  "gelu_mlp_fwd" (x, w1, b1, w2, b2) -> (y, z, h): z = x @ w1^T + b1, h = gelu_tanh(z);
  "gelu_mlp_bwd" (dy, x, z, h, w1, b1, w2, b2) -> (dx, dw1, db1, dw2, db2), an absent
  bias's gradient empty.
On CUDA the "cublaslt" implementation puts bias + GeLU into the first matmul's epilogue and
the GeLU gradient into the epilogue of the matmul that makes dh (portkit.ops.cublaslt); the
bias gradients are Triton column sums (portkit.ops.reduce_triton). Traffic saved a layer at
N x F: the bias_gelu kernels' reads and writes of z, h and dh (5 N x F tensors). Where no
implementation serves the op (ROCm, the CPU, PORTKIT_OPS=reference), `gelu_mlp` is linear ->
ops.bias_gelu -> linear, so the bias_gelu kernels still serve.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from portkit.ops import cublaslt, registry
from portkit.ops._op import (as_rows, call, check_vector, custom_op, eager_native, pick, say_once, served_device,
                             with_autograd)
from portkit.ops.activations import _gelu_grad, bias_gelu


def _empty(t: Tensor) -> Tensor:
    return t.new_empty(0)


@registry.reference("gelu_mlp_fwd", unserved="linears+bias_gelu")
def gelu_mlp_fwd(x: Tensor, w1: Tensor, b1: Optional[Tensor], w2: Tensor, b2: Optional[Tensor]):
    """-> y (N, D), z (N, F), h (N, F); GeLU in fp32."""
    z = F.linear(x, w1, b1)
    h = F.gelu(z.float(), approximate="tanh").to(x.dtype)
    return F.linear(h, w2, b2), z, h


@registry.reference("gelu_mlp_bwd", unserved="linears+bias_gelu")
def gelu_mlp_bwd(dy: Tensor, x: Tensor, z: Tensor, h: Tensor, w1: Tensor, b1: Optional[Tensor], w2: Tensor,
                 b2: Optional[Tensor]):
    """-> dx, dw1, db1, dw2, db2; the GeLU gradient and the bias sums in fp32."""
    dz = ((dy @ w2).float() * _gelu_grad(z.float())).to(x.dtype)
    db1 = dz.float().sum(0).to(b1.dtype) if b1 is not None else _empty(x)
    db2 = dy.float().sum(0).to(b2.dtype) if b2 is not None else _empty(x)
    return dz @ w1, dz.t() @ x, db1, dy.t() @ h, db2


# -- the cuBLASLt implementation -----------------------------------------------------------
def _or_reference(reference, args: tuple, lt_call):
    """lt_call(), or the reference where cuBLASLt cannot take these inputs (said once per reason)."""
    try:
        return lt_call()
    except cublaslt.Unsupported as e:
        say_once(f"portkit.ops.gelu_mlp: {e}; this shape runs unfused")
        return reference(*args)


def lt_fwd(x, w1, b1, w2, b2):
    def run():
        z = x.new_empty(x.shape[0], w1.shape[0])
        h = cublaslt.matmul(x, w1.t(), cublaslt.GELU_AUX_BIAS if b1 is not None else cublaslt.GELU_AUX, b1, z)
        return F.linear(h, w2, b2), z, h
    return _or_reference(gelu_mlp_fwd, (x, w1, b1, w2, b2), run)


def lt_bwd(dy, x, z, h, w1, b1, w2, b2):
    """dz from the dgrad matmul's DGELU epilogue; the bias gradients from portkit's Triton
    column sum (reduce_triton). DGELU_BGRAD would give dz and db1 at once, but on the H200 it
    took 1.83 ms where DGELU took 0.90 (16384 x 2048 @ 2048 x 8192); BGRADB on dw1's matmul
    runs as a kernel of its own on the H100, slower than the column sum."""
    from portkit.ops.reduce_triton import column_sum

    def run():
        dz = cublaslt.matmul(dy, w2, cublaslt.DGELU, None, z)
        db1 = column_sum(dz).to(b1.dtype) if b1 is not None else _empty(x)
        db2 = column_sum(dy).to(b2.dtype) if b2 is not None else _empty(x)
        return dz @ w1, dz.t() @ x, db1, dy.t() @ h, db2
    return _or_reference(gelu_mlp_bwd, (dy, x, z, h, w1, b1, w2, b2), run)


# -- the custom op (opaque to torch.compile: its body calls cuBLASLt through ctypes) -------
@custom_op("portkit::gelu_mlp", traced=False)
def _gelu_mlp(x: Tensor, w1: Tensor, b1: Optional[Tensor], w2: Tensor, b2: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    return pick("gelu_mlp_fwd", gelu_mlp_fwd, x)(x, w1, b1, w2, b2)


@_gelu_mlp.register_fake
def _(x, w1, b1, w2, b2):
    n, f = x.shape[0], w1.shape[0]
    return x.new_empty(n, w2.shape[0]), x.new_empty(n, f), x.new_empty(n, f)


@custom_op("portkit::gelu_mlp_backward", traced=False)
def _gelu_mlp_backward(dy: Tensor, x: Tensor, z: Tensor, h: Tensor, w1: Tensor, b1: Optional[Tensor], w2: Tensor,
                       b2: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return pick("gelu_mlp_bwd", gelu_mlp_bwd, x)(dy.contiguous(), x, z, h, w1, b1, w2, b2)


@_gelu_mlp_backward.register_fake
def _(dy, x, z, h, w1, b1, w2, b2):
    return (x.new_empty(x.shape), w1.new_empty(w1.shape), _empty(x) if b1 is None else b1.new_empty(b1.shape),
            w2.new_empty(w2.shape), _empty(x) if b2 is None else b2.new_empty(b2.shape))


def _setup(ctx, inputs, output):
    x, w1, b1, w2, b2 = inputs
    ctx.has_b = (b1 is not None, b2 is not None)
    ctx.save_for_backward(x, output[1], output[2], w1, b1, w2, b2)


def _backward(ctx, dy, *_):
    x, z, h, w1, b1, w2, b2 = ctx.saved_tensors
    dx, dw1, db1, dw2, db2 = call(ctx, _gelu_mlp_backward)(dy, x, z, h, w1, b1, w2, b2)
    return dx, dw1, db1 if ctx.has_b[0] else None, dw2, db2 if ctx.has_b[1] else None


_gelu_mlp_fn = with_autograd(_gelu_mlp, _backward, _setup)


def gelu_mlp(x: Tensor, w1: Tensor, b1: Optional[Tensor], w2: Tensor, b2: Optional[Tensor] = None) -> Tensor:
    """gelu_tanh(x @ w1^T + b1) @ w2^T + b2 for x (..., D), w1 (F, D), w2 (D, F): the GeLU MLP
    as one op where an implementation serves it (cuBLASLt epilogues on CUDA), else
    linear -> ops.bias_gelu -> linear. fp32 inputs and autocast always take the latter; an
    eager autograd call on a small x takes F.linear -> F.gelu -> F.linear (_op.eager_native)."""
    check_vector("b1", b1, w1.shape[0], "gelu_mlp")
    check_vector("b2", b2, w2.shape[0], "gelu_mlp")
    if eager_native("gelu_mlp_fwd", x, w1, b1, w2, b2) and not torch.is_autocast_enabled(x.device.type):
        return F.linear(F.gelu(F.linear(x, w1, b1), approximate="tanh"), w2, b2)
    if not _fused(x):
        return F.linear(bias_gelu(F.linear(x, w1), b1), w2, b2)
    y, _, _ = _gelu_mlp_fn(as_rows(x), w1, b1, w2, b2)
    return y.view(*x.shape[:-1], w2.shape[0])


def _fused(x: Tensor) -> bool:
    return (x.dtype in (torch.bfloat16, torch.float16) and x.device.type == _served_device()
            and not torch.is_autocast_enabled(x.device.type))


_served_device = served_device("gelu_mlp_fwd")
