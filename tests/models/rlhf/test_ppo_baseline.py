"""PPO's reward baseline (the reference's greedy score per prompt), the zeroed value head and
the default recipe's room for a whole answer."""
from pathlib import Path
from types import SimpleNamespace

import torch

from portkit.models import data as D
from portkit.models import recipe as R
from portkit.models.gpt import GPT, GPTConfig
from portkit.models.make_data import solve
from portkit.models.rlhf.ppo import reference_scores, response_end, standard_scores, zero_value_head
from portkit.models.tokenizer import ByteTokenizer

DEFAULT = Path(__file__).resolve().parents[3] / "models" / "recipes" / "default.yaml"
CFG = GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=32)


def _ctx(max_new_tokens=4):
    recipe = SimpleNamespace(ppo=R.PPO(max_new_tokens=max_new_tokens))
    return SimpleNamespace(recipe=recipe, tok=ByteTokenizer(), device=torch.device("cpu"),
                           strategy=SimpleNamespace(lockstep=False), rm_norm=(0.5, 2.0))


def _prompts(ctx, texts):
    return D.prompt_tensors([{"prompt": t} for t in texts], ctx.tok, CFG.block_size, ctx.recipe.ppo.max_new_tokens)


def test_reference_scores_are_the_greedy_responses_standardised_score():
    torch.manual_seed(0)
    ctx = _ctx()
    ref, rm = GPT(CFG).eval(), GPT(CFG, head="scalar").eval()
    prompts = _prompts(ctx, ["upper: ab", "reverse: abcde", "sort: 3 1 2"])
    got = reference_scores(ctx, ref, rm, prompts, batch=2)
    assert got.shape == (3,)
    tok = ctx.tok
    for i in range(3):  # one prompt at a time, no padding: the same numbers
        idx, valid = prompts.idx[i:i + 1], prompts.valid[i:i + 1]
        idx, valid = idx[valid][None], valid[valid][None]
        with torch.no_grad():
            seq, v = ref.generate(idx, valid, 4, tok.eos_id, tok.pad_id, 0.0)
            want = standard_scores(ctx, rm, seq, v, response_end(v, idx.shape[1]))
        assert torch.allclose(got[i], want[0], atol=1e-5)
    raw = rm(seq, valid=v)[0, -1]
    assert torch.allclose(want[0], (raw - 0.5) / 2.0, atol=1e-5)  # read at the last real token


def test_zero_value_head_outputs_zero_and_still_learns():
    critic = GPT(CFG, head="scalar")
    zero_value_head(critic)
    x = torch.randint(0, 256, (2, 5))
    out = critic(x)
    assert torch.count_nonzero(out) == 0
    out.sum().backward()
    assert critic.score.weight.grad.abs().sum() > 0


def test_default_recipe_leaves_room_for_every_answer_and_eos():
    recipe = R.load(DEFAULT)
    tok = ByteTokenizer()
    rows = D.load_jsonl(D.default_path("prompts"), "prompts")
    longest = max(len(tok.response_ids(solve(r["prompt"]))) for r in rows)
    assert longest <= recipe.ppo.max_new_tokens
