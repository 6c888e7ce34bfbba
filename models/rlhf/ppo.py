"""Stage 3: PPO with an actor (from SFT), a critic (value head, from the reward model or
SFT), a frozen reference (the SFT policy) and a frozen reward model.

Per iteration: sample responses with the KV cache; reward = the reward model's score
(standardised by its held-out mean/std) at the last token, less the same score of the
reference's greedy response to that prompt (a per-prompt baseline), minus kl_coef * KL per token
(k1: log pi - log ref; k3: (r - 1) - log r with r = ref / pi); GAE advantages; a few
epochs of the clipped policy loss and the clipped value loss; fixed or adaptive KL coefficient.
"""
from __future__ import annotations

import time

import torch

from portkit.models.gpt import sequence_logprobs
from portkit.models.make_data import solve
from portkit.models.rlhf.reward import end_scores


def gae(rewards, values, mask, gamma: float, lam: float):
    """Advantages and returns (B, R) by generalised advantage estimation over valid tokens."""
    B, R = rewards.shape
    adv = torch.zeros_like(rewards)
    last = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)
    for t in reversed(range(R)):
        cont = mask[:, t + 1].to(rewards.dtype) if t + 1 < R else torch.zeros_like(last)
        next_v = values[:, t + 1] if t + 1 < R else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_v * cont - values[:, t]
        last = delta + gamma * lam * cont * last
        adv[:, t] = last * mask[:, t]
    return adv, (adv + values) * mask


def kl_penalty(logp, ref_logp, estimator: str):
    """Per-token KL estimate of pi against ref from samples of pi."""
    if estimator == "k1":
        return logp - ref_logp
    log_r = ref_logp - logp
    return log_r.exp() - 1 - log_r


def masked_mean(x, mask):
    return (x * mask).sum() / mask.sum().clamp(min=1)


def whiten(x, mask, eps=1e-8):
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + eps) * mask


def policy_loss(logp, old_logp, adv, mask, clip: float):
    """PPO clipped surrogate; also the share of tokens where clipping was active."""
    ratio = (logp - old_logp).exp()
    loss = torch.max(-adv * ratio, -adv * ratio.clamp(1 - clip, 1 + clip))
    clipped = ((ratio - 1).abs() > clip).float()
    return masked_mean(loss, mask), masked_mean(clipped, mask)


def value_loss(v, old_v, returns, mask, clip: float):
    v_clip = old_v + (v - old_v).clamp(-clip, clip)
    return 0.5 * masked_mean(torch.max((v - returns) ** 2, (v_clip - returns) ** 2), mask)


class KLController:
    """Fixed coefficient, or the adaptive one of Ziegler et al. (2019) when target is set."""

    def __init__(self, coef: float, target: float | None, horizon: int):
        self.coef, self.target, self.horizon = coef, target, horizon

    def update(self, kl: float, n: int):
        if self.target is not None:
            err = max(-0.2, min(0.2, kl / self.target - 1))
            self.coef *= 1 + err * n / self.horizon

    def state_dict(self):
        return {"coef": self.coef}

    def load_state_dict(self, state):
        self.coef = state["coef"]


def response_end(valid, P):
    """Index of each row's last real response token: (B,)."""
    return P + valid[:, P:].sum(1).long() - 1


def standard_scores(ctx, rm, seq, valid, end):
    """The reward model's score at `end`, standardised by its held-out mean/std: (B,)."""
    return (end_scores(rm, seq, end, valid) - ctx.rm_norm[0]) / ctx.rm_norm[1]


@torch.no_grad()
def reference_scores(ctx, ref, rm, prompts, batch: int = 128):
    """The standardised score of the reference's greedy response to every prompt: (N,).
    Subtracted from the reward, it leaves the expected policy gradient as it is and removes
    the spread between prompts, which is most of the reward's variance."""
    cfg, tok = ctx.recipe.ppo, ctx.tok
    out = []
    for i in range(0, len(prompts.idx), batch):
        idx, valid = prompts.idx[i:i + batch].to(ctx.device), prompts.valid[i:i + batch].to(ctx.device)
        seq, valid = ref.generate(idx, valid, cfg.max_new_tokens, tok.eos_id, tok.pad_id, 0.0, 0, None,
                                  early_stop=not ctx.strategy.lockstep)
        out.append(standard_scores(ctx, rm, seq, valid, response_end(valid, idx.shape[1])))
    return torch.cat(out)


@torch.no_grad()
def rollout(ctx, actor, critic, ref, rm, prompts, ids, gen, kl: KLController, baseline):
    cfg, tok = ctx.recipe.ppo, ctx.tok
    idx, valid = prompts.idx[ids].to(ctx.device), prompts.valid[ids].to(ctx.device)
    P = idx.shape[1]
    actor.module.eval()
    with ctx.strategy.gathered(actor.module):
        seq, valid = actor.module.generate(idx, valid, cfg.max_new_tokens, tok.eos_id, tok.pad_id,
                                           cfg.temperature, cfg.top_k, gen.dev,
                                           early_stop=not ctx.strategy.lockstep)
    mask = valid[:, P:].float()  # (B, R) response tokens
    logp = sequence_logprobs(actor.module, seq, valid, P)
    ref_logp = sequence_logprobs(ref, seq, valid, P)
    critic.module.eval()
    values = critic.module(seq[:, :-1], valid=valid[:, :-1])[:, P - 1:] * mask
    end = response_end(valid, P)
    raw = standard_scores(ctx, rm, seq, valid, end)
    score = raw - baseline[ids.to(baseline.device)]
    kl_tok = kl_penalty(logp, ref_logp, cfg.kl_estimator) * mask
    rewards = -kl.coef * kl_tok
    rewards[torch.arange(len(end)), end - P] += score
    adv, returns = gae(rewards, values, mask, cfg.gamma, cfg.lam)
    texts = [tok.decode(row[P:][m.bool()].tolist()) for row, m in zip(seq.cpu(), mask.cpu())]
    return dict(seq=seq, valid=valid, mask=mask, logp=logp, values=values, adv=whiten(adv, mask),
                returns=returns, score=score, raw=raw, kl=(kl_tok.sum(1)), texts=texts, P=P)


def rule_accuracy(prompts: list[str], responses: list[str]) -> float | None:
    """Share of responses equal to the rule's answer (None when the prompts are not of the family)."""
    answers = [solve(p) for p in prompts]
    if any(a is None for a in answers):
        return None
    return sum(r == a for r, a in zip(responses, answers)) / len(answers)


def update(ctx, actor, critic, roll, gen) -> dict:
    cfg = ctx.recipe.ppo
    B = roll["seq"].shape[0]
    mb = max(1, cfg.minibatch // ctx.strategy.dp_world)
    stats = {"loss": 0.0, "value_loss": 0.0, "clipfrac": 0.0}
    n = 0
    actor.train()
    critic.train()
    for _ in range(cfg.ppo_epochs):
        perm = torch.randperm(B, generator=gen.cpu)
        for i in range(0, B, mb):
            s = perm[i:i + mb]
            seq, valid, mask, P = roll["seq"][s], roll["valid"][s], roll["mask"][s], roll["P"]
            logp = sequence_logprobs(actor, seq, valid, P)
            pl, clipfrac = policy_loss(logp, roll["logp"][s], roll["adv"][s], mask, cfg.clip)
            actor.backward(pl)
            actor.step()
            v = critic(seq[:, :-1], valid=valid[:, :-1])[:, P - 1:]
            vl = value_loss(v, roll["values"][s], roll["returns"][s], mask, cfg.value_clip)
            critic.backward(cfg.value_coef * vl)
            critic.step()
            for k, x in (("loss", pl), ("value_loss", vl), ("clipfrac", clipfrac)):
                stats[k] += x.item()
            n += 1
    return {k: v / n for k, v in stats.items()}


@torch.no_grad()
def zero_value_head(critic) -> None:
    """Start the critic's head at 0: rewards are relative to the reference's, so their expected
    value starts near 0 (a head copied from the reward model predicts raw scores of another
    scale, and the first value losses would swamp the critic's updates)."""
    critic.score.weight.zero_()
    critic.score.bias.zero_()


def run(ctx, actor_model, critic_model, ref, rm):
    cfg = ctx.recipe.ppo
    zero_value_head(critic_model)
    prompts = ctx.prompts(cfg.max_new_tokens)
    actor = ctx.engine(actor_model, cfg.actor_lr, 0.0)
    critic = ctx.engine(critic_model, cfg.critic_lr, 0.0)
    ref, rm = ctx.strategy.frozen(ref), ctx.strategy.frozen(rm)
    gen = ctx.generator("ppo")
    kl = KLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon)
    baseline = reference_scores(ctx, ref, rm, prompts)

    def step(i):
        t0 = time.perf_counter()
        ids = ctx.shard(torch.randint(len(prompts.idx), (cfg.rollout_batch,), generator=gen.cpu))
        roll = rollout(ctx, actor, critic, ref, rm, prompts, ids, gen, kl, baseline)
        out = update(ctx, actor, critic, roll, gen)
        acc = rule_accuracy([prompts.text[j] for j in ids.tolist()], roll["texts"])
        out.update(reward_mean=roll["score"].mean().item(), score_mean=roll["raw"].mean().item(), kl=roll["kl"].mean().item(),
                   response_len=roll["mask"].sum(1).mean().item(), rule_acc=acc)
        out = ctx.strategy.all_reduce_mean(out)
        out.update(kl_coef=kl.coef, samples_per_s=cfg.rollout_batch / (time.perf_counter() - t0))
        kl.update(out["kl"], cfg.rollout_batch)
        if i == 0 or (i + 1) % 10 == 0:
            out["sample"] = f"{prompts.text[ids[0].item()]} -> {roll['texts'][0]}"
        return out

    ctx.loop("ppo", cfg.iterations, {"actor": actor, "critic": critic, "gen": gen, "kl": kl}, step)
    return ctx.finish("ppo", {"actor": actor.model_state(), "critic": critic.model_state()})
