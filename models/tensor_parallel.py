"""Tensor parallelism for the GPT, applied to a plain, fully built model (torchtitan style).

Every rank builds the same full model from the same seed; apply_tp then keeps this rank's
slice, so a tp=N run starts from exactly the single-process weights. In order, per block:
  1. attn and mlp inputs pass Megatron's copy-to-tensor-parallel region (identity forward,
     all-reduce of the gradient backward);
  2. attn.c_attn keeps whole heads (rows are laid out per head as (nh, 3, hs));
  3. mlp.c_fc (and the GELU bias) keeps its column slice (SwiGLU's gate and up halves are
     sliced apart);
  4. attn.c_proj and mlp.c_proj become row-parallel: input slice, output all-reduced, then
     the full bias added once.
Embeddings, norms and the heads stay replicated. Attention derives its local head count
from c_attn's shape, so the model code is unchanged.
"""
from __future__ import annotations

import torch
import torch.nn as nn


class RowParallelLinear(nn.Module):
    """y = all_reduce(x_local @ W_local^T) + b, with W's input columns split over ranks."""

    def __init__(self, full: nn.Linear, tp: int, rank: int):
        super().__init__()
        cols = full.in_features // tp
        self.weight = nn.Parameter(full.weight.detach()[:, rank * cols:(rank + 1) * cols].clone())
        self.bias = None if full.bias is None else nn.Parameter(full.bias.detach().clone())

    def forward(self, x):
        from megatron.core.tensor_parallel.mappings import reduce_from_tensor_model_parallel_region
        y = reduce_from_tensor_model_parallel_region(nn.functional.linear(x, self.weight))
        return y if self.bias is None else y + self.bias


def _rows(t: torch.Tensor, tp: int, rank: int, parts: int = 1) -> nn.Parameter:
    """This rank's slice of the output rows; `parts` packed blocks are sliced separately."""
    blocks = t.detach().chunk(parts, 0)
    return nn.Parameter(torch.cat([b.chunk(tp, 0)[rank] for b in blocks], 0).clone())


def _column_parallel(linear: nn.Linear, tp: int, rank: int, parts: int = 1) -> None:
    linear.weight = _rows(linear.weight, tp, rank, parts)
    if linear.bias is not None:
        linear.bias = _rows(linear.bias, tp, rank, parts)
    linear.out_features = linear.weight.shape[0]


def _copy_to_region(module, args):
    from megatron.core.tensor_parallel.mappings import copy_to_tensor_model_parallel_region
    return (copy_to_tensor_model_parallel_region(args[0]), *args[1:])


def apply_tp(model, tp: int, rank: int):
    cfg = model.cfg
    if cfg.n_head % tp:
        raise ValueError(f"tensor parallel: n_head ({cfg.n_head}) must be divisible by tp ({tp})")
    if tp == 1:
        return model
    for block in model.h:
        block.attn.register_forward_pre_hook(_copy_to_region)
        block.mlp.register_forward_pre_hook(_copy_to_region)
        _column_parallel(block.attn.c_attn, tp, rank)
        _column_parallel(block.mlp.c_fc, tp, rank, parts=2 if cfg.mlp == "swiglu" else 1)
        if block.mlp.fc_bias is not None:
            block.mlp.fc_bias = _rows(block.mlp.fc_bias, tp, rank)
        block.attn.c_proj = RowParallelLinear(block.attn.c_proj, tp, rank)
        block.mlp.c_proj = RowParallelLinear(block.mlp.c_proj, tp, rank)
    return model
