"""Fused linear + cross-entropy: the loss of cross_entropy(hidden @ weight.T + bias, target)
without ever materialising the (N, V) logits.

Rows are processed in chunks: logits of a chunk by one matmul, then a cross-entropy step
that returns the per-row loss and overwrites the chunk's logits with their gradient, then
grad_hidden = dlogits @ W and grad_W += dlogits.T @ h, accumulated chunk by chunk in the
weight's dtype (as Liger-Kernel does: a bf16 weight gets no fp32 V x d buffer). A chunk's
logits hold about as many elements as hidden, so the peak beyond the inputs is
grad_W + grad_hidden + one hidden-sized chunk. For reduction "mean"/"sum" the gradients
are computed in the forward pass (the loss is the last op, its gradient is a scalar), so
the backward only scales them, in place; for "none" the backward recomputes the chunks
with the per-row upstream gradient.

Registry ops: "linear_cross_entropy_fwd" (hidden, weight, target, bias, ignore_index,
grad_scale) -> (loss_rows fp32 (N,), grad_hidden, grad_weight, grad_bias), where
grad_scale is None (no gradients), a 0-d or an (N,) fp32 tensor scaling each row's
gradient; and "cross_entropy_chunk", the per-chunk step a plugin may replace alone.
"""
from __future__ import annotations

from itertools import repeat
from typing import Callable, Optional

import torch
from torch import Tensor

from portkit.ops import registry
from portkit.ops._op import call, custom_op, pick, with_autograd

REDUCTIONS = ("mean", "sum", "none")
CHUNK_BUDGET = 1  # a chunk's logits hold about this many times the elements of hidden (N x d)
MIN_CHUNK_MACS = 1 << 36  # ... and a chunk's logits matmul at least this many multiply-adds (rows x V x d):
# a chunk's host time (its five calls, about 0.35 ms on an H100 machine's host) against its device work
# (three matmuls and the CE step, about 0.7 ms at this floor). GPT-2 124M: 8 chunks of 2048 rows a step;
# with 16 of 1024 a compiled step's forward was issued 2.8 ms later (H100), a floor of 64 MiB of logits
# gave 26 of 640 and the budget alone 64 of 256 (docs/benchmarks.md)


@registry.reference("cross_entropy_chunk")
def cross_entropy_chunk(logits: Tensor, target: Tensor, ignore_index: int,
                        grad_scale: Optional[Tensor]) -> Tensor:
    """logits (c, V) -> loss (c,) fp32 (0 where ignored). With grad_scale (0-d or (c,)),
    overwrites logits with scale * (softmax - onehot) (0 on ignored rows).
    Traffic: reads logits (c*V) once for the loss, again and writes them for the gradient."""
    lf = logits.float()
    valid = target != ignore_index
    safe = torch.where(valid, target, torch.zeros_like(target))
    lse = torch.logsumexp(lf, dim=-1)
    loss = torch.where(valid, lse - lf.gather(1, safe[:, None])[:, 0], torch.zeros_like(lse))
    if grad_scale is not None:
        scale = torch.where(valid, grad_scale.float().expand(valid.shape), torch.zeros_like(lse))
        grad = torch.exp(lf - lse[:, None])
        grad.scatter_add_(1, safe[:, None], -torch.ones_like(lse)[:, None])
        logits.copy_(grad * scale[:, None])
    return loss


def chunk_rows(n: int, d: int, v: int) -> int:
    """Rows per chunk, a power of two: the chunk's logits (rows x V) hold about CHUNK_BUDGET x N x d
    elements, small beside the full logits, unless MIN_CHUNK_MACS asks for more rows; large enough
    that the weight-gradient accumulation (one read and write of the V x d gradient per chunk) stays
    cheap."""
    per = max(1, -(-v // (CHUNK_BUDGET * d)))  # chunks needed so that rows*V <= BUDGET*N*d
    rows = max(-(-n // per), -(-MIN_CHUNK_MACS // (v * d)))
    return max(1, min(1 << (rows - 1).bit_length(), n))


def chunked_linear_cross_entropy(hidden: Tensor, weight: Tensor, target: Tensor, bias: Optional[Tensor],
                                 ignore_index: int, grad_scale: Optional[Tensor],
                                 ce_chunk: Callable) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The chunk loop shared by every implementation; `ce_chunk` is the per-chunk step."""
    n, d = hidden.shape
    v = weight.shape[0]
    want = grad_scale is not None
    loss = hidden.new_empty(n, dtype=torch.float32)
    gh = torch.empty_like(hidden) if want else hidden.new_empty(0)
    gw = torch.empty_like(weight) if want else hidden.new_empty(0)  # the first chunk writes it
    gb = torch.zeros(v, dtype=torch.float32, device=hidden.device) if want and bias is not None else None
    step = chunk_rows(n, d, v)
    chunk = hidden.new_empty(min(step, n), v)  # one buffer: a new chunk's logits never coexist with the last's
    wt = weight.t()
    # every chunk's views from one split per tensor, not slices per chunk: the loop's host time
    # counts at a small model's width (26-64 chunks a step, host-bound)
    rows = zip(hidden.split(step), target.split(step), loss.split(step), gh.split(step) if want else repeat(None),
               grad_scale.split(step) if want and grad_scale.dim() else repeat(grad_scale))
    for i, (h, t, out, g, scale) in enumerate(rows):
        logits = chunk if h.shape[0] == chunk.shape[0] else chunk[:h.shape[0]]  # (c, V)
        if bias is None:
            torch.mm(h, wt, out=logits)
        else:
            torch.addmm(bias, h, wt, out=logits)
        out.copy_(ce_chunk(logits, t, ignore_index, scale))
        if want:
            torch.mm(logits, weight, out=g)
            if i:
                gw.addmm_(logits.t(), h)
            else:  # no zeroed V x d buffer read back; an empty hidden is one empty chunk
                torch.mm(logits.t(), h, out=gw)
            if gb is not None:
                gb += logits.sum(0, dtype=torch.float32)
    gb = gb.to(bias.dtype) if gb is not None else hidden.new_empty(0)
    return loss, gh, gw, gb


@registry.reference("linear_cross_entropy_fwd")
def linear_cross_entropy_fwd(hidden: Tensor, weight: Tensor, target: Tensor, bias: Optional[Tensor],
                             ignore_index: int, grad_scale: Optional[Tensor]):
    """Traffic per chunk: the matmuls read h and W; the CE step reads the chunk's logits twice
    and writes them once; never more than one chunk of logits is alive."""
    ce = pick("cross_entropy_chunk", cross_entropy_chunk, hidden)
    return chunked_linear_cross_entropy(hidden, weight, target, bias, ignore_index, grad_scale, ce)


def _impl(hidden: Tensor) -> Callable:
    return pick("linear_cross_entropy_fwd", linear_cross_entropy_fwd, hidden)


def _scale(target: Tensor, ignore_index: int, reduction: str) -> Tensor:
    if reduction == "sum":
        return torch.ones((), dtype=torch.float32, device=target.device)
    valid = (target != ignore_index).sum().clamp_min(1)
    return 1.0 / valid.float()


def _reduce(loss_rows: Tensor, target: Tensor, ignore_index: int, reduction: str) -> Tensor:
    if reduction == "none":
        return loss_rows
    total = loss_rows.sum()
    if reduction == "sum":
        return total
    return total / (target != ignore_index).sum()  # nan when every row is ignored, as torch


# Opaque under torch.compile: its matmuls dwarf a call's dispatch, and its in-place chunk
# loop gains nothing from tracing.
@custom_op("portkit::linear_cross_entropy", traced=False)
def _lce(hidden: Tensor, weight: Tensor, target: Tensor, bias: Optional[Tensor], ignore_index: int,
         reduction: str, with_grads: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    scale = _scale(target, ignore_index, reduction) if with_grads else None
    with torch.autocast(hidden.device.type, enabled=False):  # dtypes are settled by the caller
        loss_rows, gh, gw, gb = _impl(hidden)(hidden, weight, target, bias, ignore_index, scale)
    return _reduce(loss_rows, target, ignore_index, reduction), gh, gw, gb


@_lce.register_fake
def _(hidden, weight, target, bias, ignore_index, reduction, with_grads):
    loss = hidden.new_empty((hidden.shape[0],) if reduction == "none" else (), dtype=torch.float32)
    if not with_grads:
        return loss, hidden.new_empty(0), hidden.new_empty(0), hidden.new_empty(0)
    gb = bias.new_empty(bias.shape) if bias is not None else hidden.new_empty(0)
    return loss, hidden.new_empty(hidden.shape), weight.new_empty(weight.shape), gb


@custom_op("portkit::linear_cross_entropy_backward", traced=False)
def _lce_backward(grad_loss: Tensor, hidden: Tensor, weight: Tensor, target: Tensor, bias: Optional[Tensor],
                  ignore_index: int) -> tuple[Tensor, Tensor, Tensor]:
    """reduction "none": recompute the chunks with the per-row upstream gradient."""
    with torch.autocast(hidden.device.type, enabled=False):
        _, gh, gw, gb = _impl(hidden)(hidden, weight, target, bias, ignore_index, grad_loss.float().contiguous())
    return gh, gw, gb


@_lce_backward.register_fake
def _(grad_loss, hidden, weight, target, bias, ignore_index):
    gb = bias.new_empty(bias.shape) if bias is not None else hidden.new_empty(0)
    return hidden.new_empty(hidden.shape), weight.new_empty(weight.shape), gb


def _setup(ctx, inputs, output):
    hidden, weight, target, bias, ignore_index, reduction, with_grads = inputs
    ctx.has_bias, ctx.ignore_index, ctx.deferred = bias is not None, ignore_index, not with_grads
    if ctx.deferred:
        ctx.save_for_backward(hidden, weight, target, bias)
    else:
        ctx.save_for_backward(*output[1:])


def _backward(ctx, grad_loss, _gh, _gw, _gb):
    if ctx.deferred:
        hidden, weight, target, bias = ctx.saved_tensors
        gh, gw, gb = call(ctx, _lce_backward)(grad_loss, hidden, weight, target, bias, ctx.ignore_index)
    elif getattr(ctx, "eager", False):  # in place: a second grad_W would double the op's peak memory
        if getattr(ctx, "scaled", False):
            raise RuntimeError("linear_cross_entropy: backward ran twice through one graph (retain_graph); its "
                               "gradients are scaled in place, so call the loss again for a second backward")
        ctx.scaled = True
        gh, gw, gb = (g.mul_(grad_loss.to(g.dtype)) for g in ctx.saved_tensors)
    else:  # traced: inductor reuses the dead buffer for the product itself
        gh, gw, gb = (g * grad_loss.to(g.dtype) for g in ctx.saved_tensors)
    return gh, gw, None, (gb if ctx.has_bias else None), None, None, None


_lce_fn = with_autograd(_lce, _backward, _setup)


def linear_cross_entropy(hidden: Tensor, weight: Tensor, target: Tensor, bias: Optional[Tensor] = None,
                         ignore_index: int = -100, reduction: str = "mean") -> Tensor:
    """cross_entropy(hidden @ weight.T (+ bias), target) in fp32, in chunks of rows.
    hidden (N, d), weight (V, d), target (N,) int64; reduction "mean", "sum" or "none".
    Under autocast the matmuls run in the autocast dtype, as F.linear's would."""
    if torch.is_autocast_enabled(hidden.device.type):
        dtype = torch.get_autocast_dtype(hidden.device.type)
        hidden, weight = hidden.to(dtype), weight.to(dtype)
        bias = bias.to(dtype) if bias is not None else None
    _check(hidden, weight, target, bias, reduction)
    needs = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (hidden, weight, bias))
    with_grads = needs and reduction != "none"
    return _lce_fn(hidden.contiguous(), weight.contiguous(), target.contiguous(), bias, ignore_index,
                reduction, with_grads)[0]


def _check(hidden: Tensor, weight: Tensor, target: Tensor, bias: Optional[Tensor], reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"linear_cross_entropy: reduction {reduction!r} is not one of {', '.join(REDUCTIONS)}")
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"linear_cross_entropy: hidden {tuple(hidden.shape)} and weight {tuple(weight.shape)} "
                         f"must be (N, d) and (V, d)")
    if tuple(target.shape) != (hidden.shape[0],) or target.dtype != torch.int64:
        raise ValueError(f"linear_cross_entropy: target is {tuple(target.shape)} {target.dtype}; "
                         f"expected ({hidden.shape[0]},) int64")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"linear_cross_entropy: bias is {tuple(bias.shape)}; expected ({weight.shape[0]},)")
    if hidden.dtype != weight.dtype:
        raise ValueError(f"linear_cross_entropy: hidden is {hidden.dtype} but weight is {weight.dtype}; "
                         f"cast one so both match")

