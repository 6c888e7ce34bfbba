"""Stand-ins for the compiled extensions apex-using code imports by name, with their
signatures, backed by portkit's registry ops (Triton on CUDA/ROCm, else the torch reference).

    fused_layer_norm_cuda            apex's layer/RMS norm kernels (forward_affine ...)
    fused_mix_prec_layer_norm_cuda   Megatron's mixed-precision layer norm (Colossal-AI)
    scaled_masked_softmax_cuda       softmax(x * scale) with a padding mask, (b, np, sq, sk)
    scaled_upper_triang_masked_softmax_cuda   the causal one, (attn_batches, sq, sk)
    scaled_softmax_cuda              no mask
    fused_weight_gradient_mlp_cuda   weight-gradient GEMM accumulated into main_grad

Like the CUDA kernels, a softmax row whose every key is masked comes out uniform (masked
scores are set to -10000 there, not -inf), and backward uses only the softmax result.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

import portkit.ops as ops
from portkit.ops import registry

LAYER_NORM_FWD, LAYER_NORM_BWD = "layer_norm_fwd", "layer_norm_bwd"
RMS_NORM_FWD, RMS_NORM_BWD, SOFTMAX_BWD = "rms_norm_fwd", "rms_norm_bwd", "softmax_bwd"


def _rows(x: Tensor, normalized_shape) -> Tensor:
    h = math.prod(normalized_shape) if not isinstance(normalized_shape, int) else normalized_shape
    return x.reshape(-1, h).contiguous()


def _vec(p: Tensor | None) -> Tensor | None:
    return p.reshape(-1) if p is not None else None


def _widen(x: Tensor, out_dtype: torch.dtype) -> Tensor:
    """x in out_dtype when that is at least as wide (an exact cast), else x unchanged."""
    return x.to(out_dtype) if torch.finfo(out_dtype).bits >= torch.finfo(x.dtype).bits else x


def _no_memory_efficient(memory_efficient: bool) -> None:
    if memory_efficient:
        raise NotImplementedError("memory_efficient=True backward (recomputing from the output) is not served "
                                  "by portkit's apex shim; pass memory_efficient=False")


# -- layer norm ---------------------------------------------------------------------------
def _ln_forward(input, normalized_shape, gamma, beta, epsilon, out_dtype):
    y, mean, rstd = registry.dispatch(LAYER_NORM_FWD)(_widen(_rows(input, normalized_shape), out_dtype),
                                                       _vec(gamma), _vec(beta), epsilon)
    return y.to(out_dtype).view(input.shape), mean, rstd


def _ln_backward(dout, mean, invvar, input, normalized_shape, gamma, beta):
    x = _rows(input, normalized_shape)
    dx, dw, db = registry.dispatch(LAYER_NORM_BWD)(_rows(dout, normalized_shape).to(x.dtype), x,
                                                   _vec(gamma), _vec(beta), mean, invvar)
    return dx.to(input.dtype).view(input.shape), dw, db


def forward_affine(input, normalized_shape, gamma, beta, epsilon):
    return _ln_forward(input, normalized_shape, gamma, beta, epsilon, input.dtype)


def forward_affine_mixed_dtypes(input, normalized_shape, gamma, beta, epsilon):
    return _ln_forward(input, normalized_shape, gamma, beta, epsilon, gamma.dtype)


def forward(input, normalized_shape, epsilon):
    return _ln_forward(input, normalized_shape, None, None, epsilon, input.dtype)


def backward_affine(dout, mean, invvar, input_or_output, normalized_shape, gamma, beta, epsilon,
                    memory_efficient=False):
    _no_memory_efficient(memory_efficient)
    dx, dw, db = _ln_backward(dout, mean, invvar, input_or_output, normalized_shape, gamma, beta)
    return dx, dw.view(gamma.shape), db.view(beta.shape)


def backward(dout, mean, invvar, input_or_output, normalized_shape, epsilon, memory_efficient=False):
    _no_memory_efficient(memory_efficient)
    return _ln_backward(dout, mean, invvar, input_or_output, normalized_shape, None, None)[0]


def mix_prec_forward_affine(input, normalized_shape, gamma, beta, epsilon):
    """Megatron's fused_mix_prec_layer_norm_cuda: output in gamma's dtype."""
    return _ln_forward(input, normalized_shape, gamma, beta, epsilon, gamma.dtype)


def mix_prec_backward_affine(dout, mean, invvar, input, normalized_shape, gamma, beta, epsilon):
    dx, dw, db = _ln_backward(dout, mean, invvar, input, normalized_shape, gamma, beta)
    return dx, dw.view(gamma.shape), db.view(beta.shape)


# -- RMS norm -----------------------------------------------------------------------------
def _rms_forward(input, normalized_shape, gamma, epsilon, out_dtype):
    y, rstd = registry.dispatch(RMS_NORM_FWD)(_widen(_rows(input, normalized_shape), out_dtype), _vec(gamma), epsilon)
    return y.to(out_dtype).view(input.shape), rstd


def _rms_backward(dout, invvar, input, normalized_shape, gamma, memory_efficient):
    _no_memory_efficient(memory_efficient)
    x = _rows(input, normalized_shape)
    dx, dw = registry.dispatch(RMS_NORM_BWD)(_rows(dout, normalized_shape).to(x.dtype), x, _vec(gamma), invvar)
    return dx.to(input.dtype).view(input.shape), dw


def rms_forward_affine(input, normalized_shape, gamma, epsilon):
    return _rms_forward(input, normalized_shape, gamma, epsilon, input.dtype)


def rms_forward_affine_mixed_dtypes(input, normalized_shape, gamma, epsilon):
    return _rms_forward(input, normalized_shape, gamma, epsilon, gamma.dtype)


def rms_forward(input, normalized_shape, epsilon):
    return _rms_forward(input, normalized_shape, None, epsilon, input.dtype)


def rms_backward_affine(dout, invvar, input_or_output, normalized_shape, gamma, epsilon, memory_efficient=False):
    dx, dw = _rms_backward(dout, invvar, input_or_output, normalized_shape, gamma, memory_efficient)
    return dx, dw.view(gamma.shape)


def rms_backward(dout, invvar, input_or_output, normalized_shape, epsilon, memory_efficient=False):
    return _rms_backward(dout, invvar, input_or_output, normalized_shape, None, memory_efficient)[0]


# -- softmax ------------------------------------------------------------------------------
@torch.no_grad()
def masked_softmax_forward(input: Tensor, mask: Tensor, scale_factor) -> Tensor:
    """input (b, np, sq, sk); mask (b, 1, sq, sk), 1/True = masked out."""
    mask = mask.bool()
    y = ops.scaled_masked_softmax(input, mask, float(scale_factor))
    all_masked = mask.all(-1, keepdim=True)                       # (b, 1, sq, 1)
    return torch.where(all_masked, torch.full_like(y, 1.0 / input.shape[-1]), y)


@torch.no_grad()
def upper_triang_softmax_forward(input: Tensor, scale_factor) -> Tensor:
    """input (attn_batches, sq, sk); position j > i masked out."""
    return ops.scaled_masked_softmax(input.unsqueeze(0), None, float(scale_factor), causal=True).squeeze(0)


@torch.no_grad()
def softmax_forward(input: Tensor, scale_factor) -> Tensor:
    return ops.scaled_masked_softmax(input, None, float(scale_factor))


@torch.no_grad()
def softmax_backward(output_grads: Tensor, softmax_results: Tensor, scale_factor) -> Tensor:
    """dx = scale * y * (dy - sum(dy * y)), as the CUDA kernels compute it."""
    return registry.dispatch(SOFTMAX_BWD)(output_grads.contiguous(), softmax_results.contiguous(), float(scale_factor))


def get_batch_per_block(query_seq_len: int, key_seq_len: int, batches: int, attn_heads: int) -> int:
    """Rows one CUDA block handles in apex's kernel; callers test divisibility with it."""
    pow2 = 1 << max(0, (key_seq_len - 1).bit_length())
    warp_size = min(pow2, 32)
    batches_per_warp = 2 if pow2 <= 128 else 1
    return (128 // warp_size) * batches_per_warp


# -- weight gradient accumulation ---------------------------------------------------------
@torch.no_grad()
def wgrad_gemm_accum_fp32(input: Tensor, d_output: Tensor, d_weight: Tensor) -> None:
    """d_weight (out, in) fp32 += d_output^T @ input, accumulated in fp32."""
    x, dy = input.reshape(-1, input.shape[-1]), d_output.reshape(-1, d_output.shape[-1])
    d_weight.add_(dy.t().float() @ x.float())


@torch.no_grad()
def wgrad_gemm_accum_fp16(input: Tensor, d_output: Tensor, d_weight: Tensor) -> None:
    """d_weight (out, in) in fp16/bf16 += d_output^T @ input."""
    x, dy = input.reshape(-1, input.shape[-1]), d_output.reshape(-1, d_output.shape[-1])
    d_weight.addmm_(dy.t().to(d_weight.dtype), x.to(d_weight.dtype))
