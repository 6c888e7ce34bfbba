"""The "flash-attn-4" implementation of causal_attention_fwd/bwd: FlashAttention-4's CuTe
kernels (package flash-attn-4, module flash_attn.cute), SM90 and SM100 kernels compiled on
a process's first call of each dtype and head dim, not per sequence length (13.5 s on an
H100; FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED=1 keeps them on disk). Its internal entry points
are used because its autograd Function cannot run inside a custom op; their signatures read
the same in flash-attn-4 4.0.0b15 and 4.0.0b40 (fwd -> out, lse, ...; bwd -> dq, dk, dv, ...).
Inputs its kernels cannot take run the fp32 reference, said once per reason on stderr.
"""
from __future__ import annotations

import torch
from torch import Tensor

from portkit import runtime
from portkit.ops import attention
from portkit.ops._op import say_once


def unsupported(q: Tensor, k: Tensor, v: Tensor) -> str | None:
    """Why FlashAttention-4 cannot take q, k, v (B, T, H, D), or None."""
    if not (q.dtype == k.dtype == v.dtype and q.dtype in (torch.float16, torch.bfloat16)):
        return f"dtypes {q.dtype}, {k.dtype}, {v.dtype}: FlashAttention-4 takes fp16 or bf16 alike"
    top = 256 if runtime.active().module.get_device_capability(q.device)[0] == 9 else 128
    if not all(8 <= d <= top and d % 8 == 0 for d in (q.shape[-1], v.shape[-1])):
        return f"head dims {q.shape[-1]}, {v.shape[-1]}: FlashAttention-4 takes multiples of 8 up to {top} here"
    if any(t.stride(-1) != 1 or t.data_ptr() % 16 for t in (q, k, v)):
        return "q, k and v need a unit last stride and 16-byte alignment"
    return None


def _or_reference(q: Tensor, k: Tensor, v: Tensor, reference, args: tuple):
    """None when FlashAttention-4 takes these inputs, else the reference's result (said once)."""
    why = unsupported(q, k, v)
    if why is None:
        return None
    say_once(f"portkit.ops.causal_attention: {why}; this call runs the fp32 reference")
    return reference(*args)


def fa4_fwd(q: Tensor, k: Tensor, v: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    fallback = _or_reference(q, k, v, attention.causal_attention_fwd, (q, k, v, scale))
    if fallback is not None:
        return fallback
    from flash_attn.cute.interface import _flash_attn_fwd
    out, lse = _flash_attn_fwd(q, k, v, softmax_scale=scale, causal=True, return_lse=True)[:2]
    return out, lse


def fa4_bwd(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, scale: float,
            dq: Tensor | None = None, dk: Tensor | None = None, dv: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    args = (dout, q, k, v, out, lse, scale, dq, dk, dv)
    fallback = _or_reference(q, k, v, attention.causal_attention_bwd, args)
    if fallback is not None:
        return fallback
    from flash_attn.cute.interface import _flash_attn_bwd
    grads = _flash_attn_bwd(q, k, v, out, dout, lse, softmax_scale=scale, causal=True, dq=dq, dk=dk, dv=dv)[:3]
    return tuple(grads)
