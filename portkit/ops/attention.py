"""Causal self-attention on (B, T, H, D) tensors, the layout a fused qkv projection gives
without a transpose.

Registry ops, scale the softmax scale:
  "causal_attention_fwd" (q, k, v, scale) -> (out, lse): out (B, T, H, D), lse (B, H, T) fp32,
  the log-sum-exp of each query's scaled scores;
  "causal_attention_bwd" (dout, q, k, v, out, lse, scale, dq=None, dk=None, dv=None) -> (dq, dk, dv),
  written into dq, dk and dv where given (views of one packed gradient, not contiguous) and
  returned.
A backend's plugin serves them with its own flash-attention kernel; where none does,
`causal_attention` is torch's scaled_dot_product_attention, which picks its own backend
(cuDNN, flash, memory-efficient). The references below are plain fp32 math, the oracle of the
tests and of conformance, taken BLOCK query rows at a time so that their memory grows with T,
not T squared.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from portkit.ops import registry
from portkit.ops._op import call, custom_op, pick, served_device, with_autograd


BLOCK = 1024  # query rows the references take at a time: scores of (B, H, BLOCK, T), never T x T


def _blocks(T: int):
    return [(i, min(i + BLOCK, T)) for i in range(0, T, BLOCK)]


def _scores(q: Tensor, k: Tensor, scale: float, first: int) -> Tensor:
    """Scaled scores of queries first.. against keys 0..first+len(q) (B, H, rows, keys), causal."""
    s = torch.einsum("bthd,bshd->bhts", q.float(), k.float()) * scale
    causal = torch.ones(s.shape[-2:], dtype=torch.bool, device=s.device).tril(first)
    return s.masked_fill(~causal, float("-inf"))


@registry.reference("causal_attention_fwd", unserved="torch sdpa")
def causal_attention_fwd(q: Tensor, k: Tensor, v: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    out = q.new_empty(*q.shape[:3], v.shape[-1])
    lse = torch.empty(q.shape[0], q.shape[2], q.shape[1], dtype=torch.float32, device=q.device)
    for i, j in _blocks(q.shape[1]):
        s = _scores(q[:, i:j], k[:, :j], scale, i)
        lse[:, :, i:j] = torch.logsumexp(s, -1)
        out[:, i:j] = torch.einsum("bhts,bshd->bthd", torch.exp(s - lse[:, :, i:j, None]), v[:, :j].float())
    return out, lse


@registry.reference("causal_attention_bwd", unserved="torch sdpa")
def causal_attention_bwd(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, scale: float,
                         dq: Optional[Tensor] = None, dk: Optional[Tensor] = None,
                         dv: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Tensor]:
    grads = [torch.zeros(t.shape, dtype=torch.float32, device=t.device) for t in (q, k, v)]
    delta = (dout.float() * out.float()).sum(-1).transpose(1, 2)  # (B, H, T)
    for i, j in _blocks(q.shape[1]):
        p = torch.exp(_scores(q[:, i:j], k[:, :j], scale, i) - lse[:, :, i:j, None])
        do = dout[:, i:j].float()
        ds = p * (torch.einsum("bthd,bshd->bhts", do, v[:, :j].float()) - delta[:, :, i:j, None]) * scale
        grads[0][:, i:j] = torch.einsum("bhts,bshd->bthd", ds, k[:, :j].float())
        grads[1][:, :j] += torch.einsum("bhts,bthd->bshd", ds, q[:, i:j].float())
        grads[2][:, :j] += torch.einsum("bhts,bthd->bshd", p, do)
    return tuple(g.to(t.dtype) if buf is None else buf.copy_(g)
                 for g, t, buf in zip(grads, (q, k, v), (dq, dk, dv)))


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


# -- q, k and v packed as a qkv projection gives them: the backward writes one gradient -----
@custom_op("portkit::causal_attention_packed", traced=False)
def _packed(qkv: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    q, k, v = qkv.unbind(3)
    return pick("causal_attention_fwd", causal_attention_fwd, q)(q, k, v, scale)


@_packed.register_fake
def _(qkv, scale):
    B, T, H, _, D = qkv.shape
    return qkv.new_empty(B, T, H, D), qkv.new_empty(B, H, T, dtype=torch.float32)


@custom_op("portkit::causal_attention_packed_backward", traced=False)
def _packed_backward(dout: Tensor, qkv: Tensor, out: Tensor, lse: Tensor, scale: float) -> Tensor:
    dqkv = torch.empty_like(qkv)
    q, k, v = qkv.unbind(3)
    pick("causal_attention_bwd", causal_attention_bwd, q)(dout.contiguous(), q, k, v, out, lse, scale, *dqkv.unbind(3))
    return dqkv


@_packed_backward.register_fake
def _(dout, qkv, out, lse, scale):
    return torch.empty_like(qkv)


def _packed_setup(ctx, inputs, output):
    qkv, ctx.scale = inputs
    ctx.save_for_backward(qkv, *output)


def _packed_grad(ctx, dout, _dlse):
    qkv, out, lse = ctx.saved_tensors
    return call(ctx, _packed_backward)(dout, qkv, out, lse, ctx.scale), None


_packed_fn = with_autograd(_packed, _packed_grad, _packed_setup)


def causal_attention_packed(qkv: Tensor, scale: Optional[float] = None) -> Tensor:
    """causal_attention of q, k, v = qkv.unbind(3) for qkv (B, T, H, 3, D), a qkv projection's
    output viewed as heads: where an implementation serves the op, its backward writes dq, dk
    and dv straight into one (B, T, H, 3, D) gradient instead of three to be assembled."""
    if not _fused(qkv):  # selects, not unbind: the backward torch.compile made before this op existed
        return causal_attention(*qkv.permute(3, 0, 1, 2, 4), scale=scale)
    return _packed_fn(qkv, qkv.shape[-1] ** -0.5 if scale is None else scale)[0]


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
