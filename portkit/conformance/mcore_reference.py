"""mcore_gpt.py's training written in plain torch, in one process: the reference its runs
through portkit are compared with, at every TP x PP layout.

Editing the script by hand for the CPU is not enough for megatron-core: megatron itself
calls CUDA (model_parallel_cuda_manual_seed -> torch.cuda.get_rng_state in
tensor_parallel/random.py, the schedules' `torch.zeros(..., device="cuda")` in
pipeline_parallel/schedules.py), so no edit of the script alone runs on plain CPU torch.
Instead this is the same model as megatron-core's GPTModel with the local layer spec
(learned positions, pre-LayerNorm blocks, fused-QKV attention laid out [q k v] per head,
GELU MLP, untied output layer), the script's weights (`init_weights` on each full matrix,
as megatron's CPU initialisation does before slicing), batches, microbatch averaging and
Adam: what a correct megatron run reproduces whatever its layout.
"""
from __future__ import annotations

import runpy
from pathlib import Path

import torch
import torch.nn.functional as F


def initial_weights(ns: dict) -> dict[str, torch.Tensor]:
    """Every parameter of the script's GPT, full size, as megatron initialises it."""
    h, v = ns["HIDDEN"], ns["VOCAB"]
    drawn = {"word": (v, h), "pos": (ns["SEQ"], h), "out": (v, h)}
    zeros = {"final.b": (h,)}
    ones = {"final.w": (h,)}
    for i in range(ns["LAYERS"]):
        drawn |= {f"{i}.qkv": (3 * h, h), f"{i}.proj": (h, h), f"{i}.fc1": (4 * h, h), f"{i}.fc2": (h, 4 * h)}
        zeros |= {f"{i}.qkv.b": (3 * h,), f"{i}.proj.b": (h,), f"{i}.fc1.b": (4 * h,), f"{i}.fc2.b": (h,),
                  f"{i}.ln1.b": (h,), f"{i}.ln2.b": (h,)}
        ones |= {f"{i}.ln1.w": (h,), f"{i}.ln2.w": (h,)}
    weights = {name: torch.zeros(shape) for name, shape in zeros.items()}
    weights |= {name: torch.ones(shape) for name, shape in ones.items()}
    for name, shape in drawn.items():
        weights[name] = torch.empty(shape)
        ns["init_weights"](weights[name])
    return {name: w.requires_grad_() for name, w in weights.items()}


def gpt_loss(w: dict[str, torch.Tensor], ns: dict, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    b, s = tokens.shape
    h, heads = ns["HIDDEN"], ns["HEADS"]
    x = w["word"][tokens] + w["pos"][:s]  # (b, s, h)
    for i in range(ns["LAYERS"]):
        y = F.layer_norm(x, (h,), w[f"{i}.ln1.w"], w[f"{i}.ln1.b"])
        qkv = F.linear(y, w[f"{i}.qkv"], w[f"{i}.qkv.b"]).view(b, s, heads, 3, h // heads)
        q, k, v = (t.transpose(1, 2) for t in qkv.unbind(3))  # (b, heads, s, h / heads)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, s, h)
        x = x + F.linear(y, w[f"{i}.proj"], w[f"{i}.proj.b"])
        y = F.layer_norm(x, (h,), w[f"{i}.ln2.w"], w[f"{i}.ln2.b"])
        x = x + F.linear(F.gelu(F.linear(y, w[f"{i}.fc1"], w[f"{i}.fc1.b"])), w[f"{i}.fc2"], w[f"{i}.fc2.b"])
    logits = F.linear(F.layer_norm(x, (h,), w["final.w"], w["final.b"]), w["out"])
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten())


def mcore_reference(script: Path) -> list[float]:
    """The script's losses, step by step: each step the mean of its microbatches' losses."""
    ns = runpy.run_path(str(script), run_name="reference")  # constants, init_weights, data; imports megatron
    weights = initial_weights(ns)
    opt = torch.optim.Adam(weights.values(), lr=ns["LR"])
    batches, micro = ns["get_train_data_iterator"](), ns["MICROBATCHES"]
    losses = []
    for _ in range(ns["STEPS"]):
        opt.zero_grad()
        step_loss = 0.0
        for _ in range(micro):
            data = next(batches)
            loss = gpt_loss(weights, ns, data["tokens"], data["labels"]) / micro
            loss.backward()
            step_loss += loss.item()
        opt.step()
        losses.append(step_loss)
    return losses
