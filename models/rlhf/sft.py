"""Stage 1: supervised fine-tuning on prompt/response pairs (loss on response tokens only)."""
from __future__ import annotations

import math
import time

import torch

from portkit.models import data as D


def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    """Linear warmup, then cosine decay to a tenth of `base`."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def trim(*tensors, pad_id=None, lengths=None):
    """Drop the columns past the longest real row of a right-padded batch."""
    L = int(lengths.max()) + 1 if lengths is not None else int((tensors[0] != pad_id).sum(1).max())
    return [t[:, :L] for t in tensors]


def sft_step(ctx, engine, sft: D.SFTData, gen, batch_size: int, lr: float) -> dict:
    t0 = time.perf_counter()
    ids = ctx.shard(torch.randint(len(sft.idx), (batch_size,), generator=gen.cpu))
    x, y = trim(sft.idx[ids], sft.targets[ids], pad_id=ctx.tok.pad_id)
    x, y = x.to(ctx.device), y.to(ctx.device)
    engine.set_lr(lr)
    loss = engine(x, y)
    engine.backward(loss)
    engine.step()
    tokens = int((y != -100).sum())
    out = ctx.strategy.all_reduce_mean({"loss": loss.item(), "tokens_per_s": tokens / (time.perf_counter() - t0)})
    out["tokens_per_s"] *= ctx.strategy.dp_world
    return {**out, "lr": lr}


def run(ctx, policy):
    cfg = ctx.recipe.sft
    sft = D.sft_tensors(ctx.rows("sft"), ctx.tok, ctx.recipe.model.block_size, ctx.data_name("sft"))
    engine = ctx.engine(policy, cfg.lr, cfg.weight_decay)
    gen = ctx.generator("sft")

    def step(i):
        engine.train()
        return sft_step(ctx, engine, sft, gen, cfg.batch_size, lr_at(i, cfg.steps, cfg.lr, cfg.warmup))

    ctx.loop("sft", cfg.steps, {"engine": engine, "gen": gen}, step)
    return ctx.finish("sft", {"policy": engine.model_state()})
