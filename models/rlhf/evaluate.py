"""Held-out evaluation of a policy, the figures an RL stage is judged by.

On the held-out prompts (those of data.reward_eval, disjoint from every training file):
greedy and sampled rule accuracy, the reward model's score of the sampled answers
(standardised by its held-out mean/std, no baseline, no KL) and the KL to the SFT policy
(sum over response tokens of log pi - log ref, on samples of pi). Sampling is at
temperature 1, the policy's own distribution, whatever a stage samples with in training.
A gain counts when it exceeds NOISE_SIGMAS standard errors of the per-prompt differences
(paired: the same prompts before and after), the noise measured on these prompts.
"""
from __future__ import annotations

import torch

from portkit.models import data as D
from portkit.models.gpt import sequence_logprobs
from portkit.models.make_data import solve
from portkit.models.rlhf.reward import end_scores

NOISE_SIGMAS = 3.0
STEPS = {"sft": 0, "ppo": 1, "rejection": 2}  # the `step` of each policy's "eval" line in metrics.jsonl


def heldout_prompts(ctx) -> D.PromptData:
    rows = [{"prompt": r["prompt"]} for r in ctx.rows("reward_eval")]
    return D.prompt_tensors(rows, ctx.tok, ctx.model_cfg.block_size, ctx.recipe.heldout.max_new_tokens,
                            ctx.data_name("reward_eval"))


def rule_correct(prompts: list[str], responses: list[str]) -> torch.Tensor | None:
    """(N,) bool, response == the rule's answer; None when a prompt is not of the rule's family."""
    answers = [solve(p) for p in prompts]
    if any(a is None for a in answers):
        return None
    return torch.tensor([r == a for r, a in zip(responses, answers)])


@torch.no_grad()
def _sample(ctx, policy, prompts: D.PromptData, i: int, n: int, new_tokens: int, temperature: float, gen):
    tok = ctx.tok
    idx, valid = prompts.idx[i:i + n].to(ctx.device), prompts.valid[i:i + n].to(ctx.device)
    with ctx.strategy.gathered(policy):
        seq, valid = policy.generate(idx, valid, new_tokens, tok.eos_id, tok.pad_id, temperature, 0,
                                     gen, early_stop=not ctx.strategy.lockstep)
    P = idx.shape[1]
    texts = [tok.decode(row[P:][m].tolist()) for row, m in zip(seq.cpu(), valid[:, P:].cpu())]
    return seq, valid, P, texts


@torch.no_grad()
def evaluate(ctx, policy, ref, rm, prompts: D.PromptData) -> dict:
    """Per-prompt tensors: greedy / sampled correctness (None without a rule), score, kl.
    Its own random stream, restarted each call: every policy is sampled with the same numbers."""
    policy.eval()
    gen = ctx.generator("eval").dev
    greedy, sampled, score, kl = [], [], [], []
    new_tokens, batch = ctx.recipe.heldout.max_new_tokens, ctx.recipe.heldout.batch
    for i in range(0, len(prompts.text), batch):
        greedy += _sample(ctx, policy, prompts, i, batch, new_tokens, 0.0, gen)[3]
        seq, valid, P, texts = _sample(ctx, policy, prompts, i, batch, new_tokens, 1.0, gen)
        sampled += texts
        end = P + valid[:, P:].sum(1) - 1
        score.append(((end_scores(rm, seq, end, valid) - ctx.rm_norm[0]) / ctx.rm_norm[1]).cpu())
        mask = valid[:, P:].float()
        logp = sequence_logprobs(policy, seq, valid, P)
        ref_logp = logp if ref is None else sequence_logprobs(ref, seq, valid, P)
        kl.append(((logp - ref_logp) * mask).sum(1).cpu())
    return {"greedy": rule_correct(prompts.text, greedy), "sampled": rule_correct(prompts.text, sampled),
            "score": torch.cat(score), "kl": torch.cat(kl), "examples": list(zip(prompts.text[:3], greedy[:3]))}


def per_prompt(result: dict) -> dict:
    """What a checkpoint keeps of an evaluation (tensors only)."""
    return {k: result[k] for k in ("greedy", "sampled", "score", "kl")}


def _mean(x: torch.Tensor | None) -> float | None:
    return None if x is None else x.float().mean().item()


def gain(before: torch.Tensor | None, after: torch.Tensor | None) -> tuple[float | None, float | None]:
    """Mean per-prompt gain and its noise margin (NOISE_SIGMAS paired standard errors)."""
    if before is None or after is None:
        return None, None
    d = after.float() - before.float()
    return d.mean().item(), NOISE_SIGMAS * (d.var(correction=1) / len(d)).sqrt().item()


def record(policy: str, now: dict, before: dict | None) -> dict:
    """The metrics line of one evaluation, with gains and margins against `before` (the SFT policy)."""
    out = {"policy": policy, "n": len(now["score"]), "greedy_acc": _mean(now["greedy"]),
           "sampled_acc": _mean(now["sampled"]), "rm_score": _mean(now["score"]), "kl": _mean(now["kl"]),
           "sample": " | ".join(f"{p} -> {r}" for p, r in now["examples"])}
    if before is not None:
        for key in ("greedy", "sampled"):
            out[f"{key}_gain"], out[f"{key}_margin"] = gain(before[key], now[key])
        out["rm_score_gain"] = _mean(now["score"] - before["score"])
    return out


def evaluate_stage(ctx, stage: str, policy, ref, rm) -> dict:
    """An RL stage's held-out evaluation against the SFT policy's, logged before the stage commits."""
    result = evaluate(ctx, policy, ref, rm, heldout_prompts(ctx))
    ctx.log("eval", STEPS[stage], record(stage, result, ctx.heldout_sft))
    return per_prompt(result)
