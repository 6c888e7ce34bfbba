"""Triton multi-tensor AdamW step (CUDA and ROCm).

Every tensor of a group (same param dtype, grad dtype, master or not, device) is updated
by one launch: a table of raw data pointers and a block table (tensor, offset) drive the
programs, as apex's multi_tensor_apply does. The block table is built once per parameter
layout; the pointer table whenever a pointer moves, copied without a host-device sync.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from portkit.ops._op import launchable

BLOCK = 2048  # with 16 warps: 3009 GB/s on an H100 (4096/8 gave 2592, torch fused 2634)
WARPS = 16

_TL = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


@triton.jit
def _load_ptr(PTRS, index, DT: tl.constexpr, ALIGNED: tl.constexpr):
    ptr = tl.load(PTRS + index).to(tl.pointer_type(DT))
    if ALIGNED:  # every tensor of the launch starts on 16 bytes (checked on the host): vector loads
        ptr = tl.multiple_of(ptr, 16)
    return ptr


@triton.jit
def _adamw_kernel(PTRS, NUMELS, BLOCK_TENSOR, BLOCK_START, n_tensors, decay, beta1, beta2, eps,
                  step_size, bc2_sqrt, P_DT: tl.constexpr, G_DT: tl.constexpr, HAS_MASTER: tl.constexpr,
                  ALIGNED: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    t = tl.load(BLOCK_TENSOR + pid)
    start = tl.multiple_of(tl.load(BLOCK_START + pid), BLOCK)
    offs = start + tl.arange(0, BLOCK)
    mask = offs < tl.load(NUMELS + t)
    p_ptr = _load_ptr(PTRS, t, P_DT, ALIGNED)
    g_ptr = _load_ptr(PTRS, n_tensors + t, G_DT, ALIGNED)
    m_ptr = _load_ptr(PTRS, 2 * n_tensors + t, tl.float32, ALIGNED)
    v_ptr = _load_ptr(PTRS, 3 * n_tensors + t, tl.float32, ALIGNED)
    if HAS_MASTER:
        w_ptr = _load_ptr(PTRS, 4 * n_tensors + t, tl.float32, ALIGNED)
        w = tl.load(w_ptr + offs, mask=mask, other=0.0)
    else:
        w = tl.load(p_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    m = tl.load(m_ptr + offs, mask=mask, other=0.0)
    v = tl.load(v_ptr + offs, mask=mask, other=0.0)
    w = w * decay
    m = m + (1.0 - beta1) * (g - m)
    v = v * beta2 + (1.0 - beta2) * g * g
    w = w - step_size * (m / (tl.sqrt(v) / bc2_sqrt + eps))
    tl.store(m_ptr + offs, m, mask=mask)
    tl.store(v_ptr + offs, v, mask=mask)
    if HAS_MASTER:
        tl.store(w_ptr + offs, w, mask=mask)
    tl.store(p_ptr + offs, w.to(P_DT), mask=mask)


_blocks: dict[tuple, tuple] = {}                # (numels, device) -> block tables on the device
_pointers: dict[tuple, tuple[tuple, torch.Tensor]] = {}  # group -> (pointer key, pointer table)


def _block_tables(numels: list[int], device: torch.device) -> tuple:
    """(numels, tensor of each block, its start) on the device: built once per parameter layout."""
    key = (tuple(numels), device)
    hit = _blocks.get(key)
    if hit is None:
        if len(_blocks) > 64:  # optimizers come and go (tests, restarts): keep the cache small
            _blocks.clear()
        n = torch.tensor(numels, dtype=torch.int64)
        blocks = (n + BLOCK - 1) // BLOCK
        tensor_of_block = torch.repeat_interleave(torch.arange(len(numels)), blocks)
        first = torch.cumsum(blocks, 0) - blocks
        start = (torch.arange(int(blocks.sum())) - first[tensor_of_block]) * BLOCK
        hit = _blocks[key] = tuple(t.to(device) for t in (n, tensor_of_block.to(torch.int32), start))
    return hit


def _pointer_table(group: tuple, tensors: list[list[torch.Tensor]], device: torch.device) -> torch.Tensor:
    """Raw data pointers of every tensor of the group, rebuilt when one moves: gradients freed
    by zero_grad(set_to_none=True) come back elsewhere, so usually every step. The copy goes
    through pinned memory, non-blocking: a pageable copy would make the host wait for the
    device every step and serialise the whole training loop."""
    key = tuple(t.data_ptr() for row in tensors for t in row)
    hit = _pointers.get(group)
    if hit is None or hit[0] != key:
        if len(_pointers) > 64:
            _pointers.clear()
        flat = torch.tensor(key, dtype=torch.int64)
        if device.type != "cpu":
            flat = flat.pin_memory()
        hit = _pointers[group] = (key, flat.to(device, non_blocking=True))
    return hit[1]


def _groups(params, grads, exp_avgs, exp_avg_sqs, masters):
    out: dict[tuple, list[list[torch.Tensor]]] = {}
    for p, g, m, v, w in zip(params, grads, exp_avgs, exp_avg_sqs, masters):
        if not (p.is_contiguous() and g.is_contiguous() and m.is_contiguous() and v.is_contiguous()):
            raise ValueError(f"FusedAdamW (Triton): a parameter of shape {tuple(p.shape)} or its gradient "
                             f"is not contiguous; make it contiguous or run with PORTKIT_OPS=reference")
        if p.dtype not in _TL or g.dtype not in _TL:
            raise ValueError(f"FusedAdamW (Triton): params/grads of dtype {p.dtype}/{g.dtype} are not supported; "
                             f"use fp32, bf16 or fp16, or run with PORTKIT_OPS=reference")
        key = (p.dtype, g.dtype, w is not None, p.device)
        rows = out.setdefault(key, [[], [], [], [], []])
        for row, t in zip(rows, (p, g, m, v, w if w is not None else p)):
            row.append(t)
    return out


def adamw_step(params, grads, exp_avgs, exp_avg_sqs, masters, step, lr, beta1, beta2, eps, weight_decay):
    decay = 1.0 - lr * weight_decay
    step_size = lr / (1.0 - beta1 ** step)
    bc2_sqrt = math.sqrt(1.0 - beta2 ** step)
    for (p_dt, g_dt, has_master, device), rows in _groups(params, grads, exp_avgs, exp_avg_sqs, masters).items():
        group = (p_dt, g_dt, has_master, device, id(rows[0][0]))
        numels, tensor_of_block, start = _block_tables([t.numel() for t in rows[0]], device)
        flat = _pointer_table(group, rows, device)
        aligned = all(t.data_ptr() % 16 == 0 for row in rows for t in row)
        launchable(_adamw_kernel)[(tensor_of_block.numel(),)](
            flat, numels, tensor_of_block, start, len(rows[0]), decay, beta1, beta2, eps, step_size, bc2_sqrt,
            P_DT=_TL[p_dt], G_DT=_TL[g_dt], HAS_MASTER=has_master, ALIGNED=aligned, BLOCK=BLOCK,
            num_warps=WARPS)
