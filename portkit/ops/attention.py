"""Causal self-attention on (B, T, H, D) tensors, the layout a fused qkv projection gives
without a transpose.

Registry ops, scale the softmax scale:
  "causal_attention_fwd" (q, k, v, scale) -> (out, lse): out (B, T, H, D), lse (B, H, T) fp32,
  the log-sum-exp of each query's scaled scores;
  "causal_attention_bwd" (dout, q, k, v, out, lse, scale) -> (dq, dk, dv).
A backend's plugin serves them with its own flash-attention kernel; where none does,
`causal_attention` is torch's scaled_dot_product_attention, which picks its own backend
(cuDNN, flash, memory-efficient). The references below are plain fp32 math, the oracle of the
tests and of conformance.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from portkit.ops import registry
from portkit.ops._op import call, custom_op, pick, served_device, with_autograd


def _scores(q: Tensor, k: Tensor, scale: float) -> Tensor:
    s = torch.einsum("bthd,bshd->bhts", q.float(), k.float()) * scale
    causal = torch.ones(s.shape[-2:], dtype=torch.bool, device=s.device).tril()
    return s.masked_fill(~causal, float("-inf"))


@registry.reference("causal_attention_fwd", unserved="torch sdpa")
def causal_attention_fwd(q: Tensor, k: Tensor, v: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    s = _scores(q, k, scale)
    lse = torch.logsumexp(s, -1)
    out = torch.einsum("bhts,bshd->bthd", torch.exp(s - lse.unsqueeze(-1)), v.float())
    return out.to(q.dtype), lse


@registry.reference("causal_attention_bwd", unserved="torch sdpa")
def causal_attention_bwd(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                         scale: float) -> tuple[Tensor, Tensor, Tensor]:
    p = torch.exp(_scores(q, k, scale) - lse.unsqueeze(-1))
    do = dout.float()
    dv = torch.einsum("bhts,bthd->bshd", p, do)
    delta = (do * out.float()).sum(-1).transpose(1, 2)  # (B, H, T)
    ds = p * (torch.einsum("bthd,bshd->bhts", do, v.float()) - delta.unsqueeze(-1)) * scale
    dq = torch.einsum("bhts,bshd->bthd", ds, k.float())
    dk = torch.einsum("bhts,bthd->bshd", ds, q.float())
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


# -- the custom op (opaque to torch.compile: an implementation may call any kernel) --------
@custom_op("portkit::causal_attention", traced=False)
def _attention(q: Tensor, k: Tensor, v: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    return pick("causal_attention_fwd", causal_attention_fwd, q)(q, k, v, scale)


@_attention.register_fake
def _(q, k, v, scale):
    B, T, H, _ = q.shape
    return q.new_empty(B, T, H, v.shape[-1]), q.new_empty(B, H, T, dtype=torch.float32)


@custom_op("portkit::causal_attention_backward", traced=False)
def _attention_backward(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                        scale: float) -> tuple[Tensor, Tensor, Tensor]:
    return pick("causal_attention_bwd", causal_attention_bwd, q)(dout.contiguous(), q, k, v, out, lse, scale)


@_attention_backward.register_fake
def _(dout, q, k, v, out, lse, scale):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup(ctx, inputs, output):
    q, k, v, ctx.scale = inputs
    ctx.save_for_backward(q, k, v, *output)


def _backward(ctx, dout, _dlse):
    q, k, v, out, lse = ctx.saved_tensors
    return (*call(ctx, _attention_backward)(dout, q, k, v, out, lse, ctx.scale), None)


_attention_fn = with_autograd(_attention, _backward, _setup)


def causal_attention(q: Tensor, k: Tensor, v: Tensor, scale: Optional[float] = None) -> Tensor:
    """softmax(q k^T * scale, causal) v for q, k, v (B, T, H, D) -> (B, T, H, D); scale
    defaults to D ** -0.5. One op where an implementation serves bf16/fp16 on this device,
    else F.scaled_dot_product_attention on transposed views."""
    if not q.shape[:2] == k.shape[:2] == v.shape[:2]:
        raise ValueError(f"causal_attention: q {tuple(q.shape)}, k {tuple(k.shape)} and v {tuple(v.shape)} must share "
                         f"(B, T): self-attention; attend to other keys with F.scaled_dot_product_attention and a mask")
    if not _fused(q):  # the call the GPT made before this op existed
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                           is_causal=True, scale=scale)
        return y.transpose(1, 2)
    return _attention_fn(q, k, v, q.shape[-1] ** -0.5 if scale is None else scale)[0]


def _fused(q: Tensor) -> bool:
    return q.dtype in (torch.bfloat16, torch.float16) and q.device.type == _served_device()


_served_device = served_device("causal_attention_fwd")
