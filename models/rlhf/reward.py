"""Stage 2: a reward model (the SFT trunk with a scalar head) trained with the pairwise
ranking loss -log sigmoid(r_chosen - r_rejected).

Its pairs are the file's (data.reward, hand-made) and, as InstructGPT ranked the SFT model's
own outputs, pairs of the SFT policy's samples labelled by the rule: generated here from this
run's SFT policy, so they are its errors on whatever backend and model size the recipe runs
(pre-generated pairs would be another policy's). The reward model is judged where PPO uses
it: accuracy on the SFT policy's own right-vs-wrong answers to the held-out prompts, beside
the accuracy on the held-out hand-made pairs. The stage ends with the held-out evaluation
of the SFT policy, the "before" of every RL stage."""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from portkit.models import data as D
from portkit.models.make_data import solve
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


@torch.no_grad()
def policy_pairs(ctx, policy, prompts: list[str], gen) -> list[dict]:
    """Pairs of the policy's own samples, `policy_samples` per prompt, labelled by the rule:
    each distinct wrong answer against a right one, where a prompt got both."""
    cfg, tok = ctx.recipe.reward, ctx.tok
    if any(solve(p) is None for p in prompts):
        raise D.DataError(f"{ctx.data_name('reward')}: reward.policy_prompts needs prompts the rule can check "
                          f"(the embedded reverse/sort/upper family); set reward.policy_prompts: 0 for other data")
    data = D.prompt_tensors([{"prompt": p} for p in prompts], tok, ctx.model_cfg.block_size,
                            ctx.recipe.heldout.max_new_tokens)
    policy.eval()
    rows = []
    for i in range(0, len(prompts), ctx.recipe.heldout.batch):
        n = cfg.policy_samples
        idx = data.idx[i:i + ctx.recipe.heldout.batch].repeat_interleave(n, 0).to(ctx.device)
        valid = data.valid[i:i + ctx.recipe.heldout.batch].repeat_interleave(n, 0).to(ctx.device)
        with ctx.strategy.gathered(policy):
            seq, valid = policy.generate(idx, valid, ctx.recipe.heldout.max_new_tokens, tok.eos_id, tok.pad_id,
                                         1.0, 0, gen.dev, early_stop=not ctx.strategy.lockstep)
        P = idx.shape[1]
        texts = [tok.decode(r[P:][m].tolist()) for r, m in zip(seq.cpu(), valid[:, P:].cpu())]
        for k, prompt in enumerate(prompts[i:i + ctx.recipe.heldout.batch]):
            rows += _ranked(prompt, texts[k * n:(k + 1) * n])
    return rows


def _ranked(prompt: str, answers: list[str]) -> list[dict]:
    right = solve(prompt)
    wrong = sorted({a for a in answers if a != right})
    return [{"prompt": prompt, "chosen": right, "rejected": w} for w in wrong] if right in answers else []


def draw_weights(n_file: int, n_own: int, share: float) -> torch.Tensor:
    """Sampling weights of the training pairs (the file's, then the policy's own): the own
    pairs make `share` of the draws (none when there are none)."""
    if n_own == 0:
        return torch.ones(n_file)
    return torch.cat([torch.full((n_file,), (1 - share) / n_file), torch.full((n_own,), share / n_own)])


def run(ctx, rm, policy):
    cfg, block = ctx.recipe.reward, ctx.recipe.model.block_size
    gen = ctx.generator("reward")
    rows = ctx.rows("reward")
    own = policy_pairs(ctx, policy, [r["prompt"] for r in rows[:cfg.policy_prompts]], gen)
    held_rows = ctx.rows("reward_eval")
    held_own = policy_pairs(ctx, policy, [r["prompt"] for r in held_rows], gen) if cfg.policy_prompts else []
    ctx.progress.note(f"[reward] {len(own)} pairs of the SFT policy's own samples (of {cfg.policy_prompts} "
                      f"prompts) beside {len(rows)} hand-made; {len(held_own)} held out")
    train = D.pair_tensors(rows + own, ctx.tok, block, ctx.data_name("reward"))
    held = D.pair_tensors(held_rows, ctx.tok, block, ctx.data_name("reward_eval"))
    weights = draw_weights(len(rows), len(own), cfg.policy_share)
    n_held_own = len(held_own)
    held_own = D.pair_tensors(held_own, ctx.tok, block, "held-out policy pairs") if held_own else None
    engine = ctx.engine(rm, cfg.lr, cfg.weight_decay)

    def step(i):
        t0 = time.perf_counter()
        engine.train()
        lr = lr_at(i, cfg.steps, cfg.lr, cfg.warmup)
        engine.set_lr(lr)
        ids = ctx.shard(torch.multinomial(weights, cfg.batch_size, replacement=True, generator=gen.cpu))
        c, r = pair_scores(engine, train, ids, ctx.device)
        loss = ranking_loss(c, r)
        engine.backward(loss)
        engine.step()
        out = {"loss": loss.item(), "acc": accuracy(c.detach(), r.detach()),
               "pairs_per_s": len(ids) / (time.perf_counter() - t0)}
        out = {**ctx.strategy.all_reduce_mean(out), "lr": lr}
        if (i + 1) % cfg.eval_every == 0 or i + 1 == cfg.steps:
            out["eval_acc"] = evaluate(ctx, engine.module, held)[0]
            if held_own:
                out["eval_policy_acc"] = evaluate(ctx, engine.module, held_own)[0]
        return out

    ctx.loop("reward", cfg.steps, {"engine": engine, "gen": gen}, step)
    acc, mean, std = evaluate(ctx, engine.module, held)
    ctx.rm_norm = (mean, std)
    state = {"rm": engine.model_state(), "eval_acc": acc, "score_mean": mean, "score_std": std,
             "policy_acc": evaluate(ctx, engine.module, held_own)[0] if held_own else None,
             "policy_pairs": n_held_own, "heldout_sft": evaluate_sft(ctx, policy, engine.module)}
    return ctx.finish("reward", state)


def evaluate_sft(ctx, policy, rm) -> dict:
    """The SFT policy's held-out evaluation, logged before the stage commits (so a resume
    neither loses nor repeats it); the per-prompt results are what RL stages are judged against."""
    from portkit.models.rlhf import evaluate as E  # here: evaluate.py imports this module
    result = E.evaluate(ctx, policy, None, rm, E.heldout_prompts(ctx))
    ctx.log("eval", E.STEPS["sft"], E.record("sft", result, None))
    return E.per_prompt(result)
