"""Stage 2: a reward model (the SFT trunk with a scalar head) trained with the pairwise
ranking loss -log sigmoid(r_chosen - r_rejected); accuracy on the held-out pairs."""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from portkit.models import data as D
from portkit.models.rlhf.sft import lr_at


def end_scores(model, idx, end, valid=None):
    """The scalar head at each row's last real token: (B,)."""
    scores = model(idx, valid=valid)  # (B, T)
    return scores.gather(1, end[:, None]).squeeze(1)


def pair_scores(model, pairs: D.PairData, ids, device):
    """Scores of chosen and rejected for rows `ids`, both in one forward."""
    c, r = pairs.chosen[ids], pairs.rejected[ids]
    L = max(int(pairs.chosen_end[ids].max()), int(pairs.rejected_end[ids].max())) + 1
    x = torch.cat([F.pad(c, (0, max(0, L - c.shape[1])))[:, :L], F.pad(r, (0, max(0, L - r.shape[1])))[:, :L]])
    end = torch.cat([pairs.chosen_end[ids], pairs.rejected_end[ids]])
    s = end_scores(model, x.to(device), end.to(device))
    return s.chunk(2)


def ranking_loss(chosen, rejected):
    return -F.logsigmoid(chosen - rejected).mean()


def accuracy(chosen, rejected) -> float:
    """Share of pairs where the chosen response scores strictly higher."""
    return (chosen > rejected).float().mean().item()


@torch.no_grad()
def evaluate(ctx, model, pairs: D.PairData, batch: int = 64) -> tuple[float, float, float]:
    """Held-out accuracy over all pairs (sharded over ranks), and mean/std of all scores."""
    model.eval()
    ids = ctx.shard_all(len(pairs.chosen))
    stats = torch.zeros(4, dtype=torch.float64)  # correct, count, sum, sum of squares
    for i in range(0, len(ids), batch):
        c, r = pair_scores(model, pairs, ids[i:i + batch], ctx.device)
        s = torch.cat([c, r]).double().cpu()
        stats += torch.tensor([(c > r).sum().item(), len(c), s.sum().item(), (s * s).sum().item()])
    stats = ctx.strategy.all_reduce_sum(stats.to(ctx.device)).cpu()
    n = 2 * stats[1]
    mean = stats[2] / n
    std = (stats[3] / n - mean ** 2).clamp(min=1e-8).sqrt()
    return (stats[0] / stats[1]).item(), mean.item(), std.item()


def run(ctx, rm):
    cfg, block = ctx.recipe.reward, ctx.recipe.model.block_size
    train = D.pair_tensors(ctx.rows("reward"), ctx.tok, block, ctx.data_name("reward"))
    held = D.pair_tensors(ctx.rows("reward_eval"), ctx.tok, block, ctx.data_name("reward_eval"))
    engine = ctx.engine(rm, cfg.lr, cfg.weight_decay)
    gen = ctx.generator("reward")

    def step(i):
        t0 = time.perf_counter()
        engine.train()
        lr = lr_at(i, cfg.steps, cfg.lr, cfg.warmup)
        engine.set_lr(lr)
        ids = ctx.shard(torch.randint(len(train.chosen), (cfg.batch_size,), generator=gen.cpu))
        c, r = pair_scores(engine, train, ids, ctx.device)
        loss = ranking_loss(c, r)
        engine.backward(loss)
        engine.step()
        out = {"loss": loss.item(), "acc": accuracy(c.detach(), r.detach()),
               "pairs_per_s": len(ids) / (time.perf_counter() - t0)}
        out = {**ctx.strategy.all_reduce_mean(out), "lr": lr}
        if (i + 1) % cfg.eval_every == 0 or i + 1 == cfg.steps:
            out["eval_acc"] = evaluate(ctx, engine.module, held)[0]
        return out

    ctx.loop("reward", cfg.steps, {"engine": engine, "gen": gen}, step)
    acc, mean, std = evaluate(ctx, engine.module, held)
    return ctx.finish("reward", {"rm": engine.model_state(), "eval_acc": acc, "score_mean": mean, "score_std": std})
