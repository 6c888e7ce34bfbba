"""Stage 3, the alternative to PPO: rejection sampling. Each round samples N responses per
prompt, keeps the one the reward model scores highest (best-of-N), and fine-tunes the
policy on the winners with the SFT loss."""
from __future__ import annotations

import time

import torch

from portkit.models.rlhf.ppo import rule_accuracy
from portkit.models.rlhf.reward import end_scores


@torch.no_grad()
def best_of_n(ctx, policy, rm, prompts, ids, gen):
    """Winners as (seq, valid) rows, with mean scores of all samples and of the winners."""
    cfg, tok = ctx.recipe.rejection, ctx.tok
    n = cfg.n_samples
    idx = prompts.idx[ids].repeat_interleave(n, 0).to(ctx.device)
    valid = prompts.valid[ids].repeat_interleave(n, 0).to(ctx.device)
    P = idx.shape[1]
    policy.eval()
    with ctx.strategy.gathered(policy):
        seq, valid = policy.generate(idx, valid, cfg.max_new_tokens, tok.eos_id, tok.pad_id, cfg.temperature,
                                     cfg.top_k, gen.dev, early_stop=not ctx.strategy.lockstep)
    end = P + valid[:, P:].sum(1) - 1  # last real column of each row
    scores = ((end_scores(rm, seq, end, valid) - ctx.rm_norm[0]) / ctx.rm_norm[1]).view(-1, n)
    best = scores.argmax(1) + torch.arange(len(ids), device=scores.device) * n
    texts = [tok.decode(seq[b, P:][valid[b, P:]].tolist()) for b in best.tolist()]
    return seq[best], valid[best], scores.mean().item(), scores.max(1).values.mean().item(), texts


def finetune(ctx, engine, seq, valid, P, gen) -> float:
    cfg = ctx.recipe.rejection
    targets = seq[:, 1:].masked_fill(~valid[:, 1:], -100)
    targets[:, :P - 1] = -100  # learn the response only
    total = 0.0
    engine.train()
    engine.set_lr(cfg.lr)
    bs = max(1, cfg.batch_size // ctx.strategy.dp_world)
    for _ in range(cfg.steps_per_round):
        s = torch.randint(len(seq), (bs,), generator=gen.cpu).to(seq.device)
        loss = engine(seq[s, :-1], targets[s], valid[s, :-1])
        engine.backward(loss)
        engine.step()
        total += loss.item()
    return total / cfg.steps_per_round


def run(ctx, policy, rm):
    cfg = ctx.recipe.rejection
    prompts = ctx.prompts(cfg.max_new_tokens)
    engine = ctx.engine(policy, cfg.lr, 0.0)
    rm = ctx.strategy.frozen(rm)
    gen = ctx.generator("rejection")

    def step(i):
        t0 = time.perf_counter()
        ids = ctx.shard(torch.randint(len(prompts.idx), (cfg.prompts_per_round,), generator=gen.cpu))
        seq, valid, mean, best, texts = best_of_n(ctx, engine.module, rm, prompts, ids, gen)
        loss = finetune(ctx, engine, seq, valid, prompts.idx.shape[1], gen)
        acc = rule_accuracy([prompts.text[j] for j in ids.tolist()], texts)
        out = ctx.strategy.all_reduce_mean({"loss": loss, "reward_mean": mean, "reward_best": best,
                                            "rule_acc_best": acc})
        out["sample"] = f"{prompts.text[ids[0].item()]} -> {texts[0]}"
        out["seconds"] = time.perf_counter() - t0
        return out

    ctx.loop("rejection", cfg.rounds, {"engine": engine, "gen": gen}, step)
    return ctx.finish("rejection", {"policy": engine.model_state()})
