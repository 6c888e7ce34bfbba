import pytest
import torch

from portkit.models.gpt import GPT, GPTConfig, sequence_logprobs
from portkit.models.tokenizer import ByteTokenizer

VARIANTS = [dict(), dict(norm="rmsnorm", pos="rotary", mlp="swiglu", bias=False)]


def tiny(**kw):
    torch.manual_seed(0)
    return GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, **kw)).eval()


@pytest.mark.parametrize("kw", VARIANTS)
def test_shapes_and_loss(kw):
    m = tiny(**kw)
    x = torch.randint(0, 256, (3, 11))
    nll = m(x, x, reduction="none")
    assert nll.shape == (3, 11)
    assert torch.allclose(m(x, x), nll.mean(), atol=1e-5)
    h = m.trunk(x)
    assert h.shape == (3, 11, 32)
    full = torch.nn.functional.cross_entropy(m.logits(h.flatten(0, 1)), x.flatten(), reduction="none")
    assert torch.allclose(full.view(3, 11), nll, atol=1e-4)


def test_scalar_head_shares_the_trunk():
    torch.manual_seed(0)
    m = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=16), head="scalar")
    assert m(torch.randint(0, 256, (2, 5))).shape == (2, 5)
    with pytest.raises(ValueError, match="head must be"):
        GPT(GPTConfig(), head="value")


def test_config_errors_give_the_numbers():
    with pytest.raises(ValueError, match=r"n_embd \(100\) must be divisible by n_head \(3\)"):
        GPTConfig(n_embd=100, n_head=3)
    with pytest.raises(ValueError, match="norm must be one of layernorm, rmsnorm"):
        GPTConfig(norm="batchnorm")
    with pytest.raises(ValueError, match="block size is only 32"):
        tiny().trunk(torch.zeros(1, 33, dtype=torch.long))


def _left_padded_prompts():
    tok = ByteTokenizer()
    seqs = [tok.prompt_ids("reverse: abc"), tok.prompt_ids("sort: 3 1 2 9")]
    L = max(map(len, seqs))
    idx = torch.full((2, L), tok.pad_id)
    valid = torch.zeros(2, L, dtype=torch.bool)
    for i, s in enumerate(seqs):
        idx[i, L - len(s):], valid[i, L - len(s):] = torch.tensor(s), True
    return tok, idx, valid


@pytest.mark.parametrize("kw", VARIANTS)
def test_kv_cache_generation_equals_full_forward(kw):
    m = tiny(**kw)
    tok, idx, valid = _left_padded_prompts()
    seq, v = m.generate(idx, valid, 6, eos_id=-1, pad_id=tok.pad_id, temperature=0)
    assert seq.shape == (2, idx.shape[1] + 6) and v[:, idx.shape[1]:].all()
    # greedy decoding without a cache: the full forward at every length picks the same tokens
    cur, cur_v = idx, valid
    for _ in range(6):
        h = m.trunk(cur, cur_v)[:, -1]
        nxt = m.logits(h).argmax(-1)
        cur, cur_v = torch.cat([cur, nxt[:, None]], 1), torch.cat([cur_v, torch.ones(2, 1, dtype=torch.bool)], 1)
    assert torch.equal(cur, seq)


def test_left_padding_does_not_change_a_row():
    m = tiny()
    tok, idx, valid = _left_padded_prompts()
    alone = torch.tensor([tok.prompt_ids("reverse: abc")])
    h_alone = m.trunk(alone)[:, -1]
    h_batch = m.trunk(idx, valid)[:1, -1]
    assert torch.allclose(h_alone, h_batch, atol=1e-5)


def test_generation_stops_rows_at_eos_and_logprobs_align():
    m = tiny()
    tok, idx, valid = _left_padded_prompts()
    g = torch.Generator().manual_seed(0)
    seq, v = m.generate(idx, valid, 8, eos_id=tok.eos_id, pad_id=tok.pad_id, temperature=1.0, top_k=5, generator=g)
    resp_valid = v[:, idx.shape[1]:]
    # valid response tokens form a prefix; after it only padding
    for row, rv in zip(seq[:, idx.shape[1]:], resp_valid):
        n = int(rv.sum())
        assert rv[:n].all() and not rv[n:].any() and (row[n:] == tok.pad_id).all()
    lp = sequence_logprobs(m, seq, v, idx.shape[1])
    assert lp.shape == resp_valid.shape and (lp <= 0).all()


@pytest.mark.parametrize("kw", VARIANTS)
def test_static_cache_draws_the_tokens_of_the_growing_cache_for_a_seed(kw):
    from portkit.models.generate import generate
    from portkit.models.gpt import _sample
    m = tiny(**kw)
    tok, idx, valid = _left_padded_prompts()
    for seed in range(3):
        runs = []
        for mode in ("static", "plain"):  # "graph" replays the "static" step: the GPU test below
            g = torch.Generator().manual_seed(seed)
            runs.append(generate(m, idx, valid, 12, tok.eos_id, tok.pad_id, lambda lg: _sample(lg, 1.0, 5, g),
                                 mode=mode))
        (ours, ours_v), (theirs, theirs_v) = runs
        assert torch.equal(ours, theirs) and torch.equal(ours_v, theirs_v)
        assert (ours[:, idx.shape[1]:] != tok.pad_id).any()  # something was sampled


@pytest.mark.gpu
def test_graph_replay_draws_the_tokens_of_the_plain_loop_gpu():
    """fp32: in bf16 the static cache's attention over the whole (masked) buffer may round
    an activation one ulp apart from the growing cache's, enough to move a rare draw."""
    from portkit.bench.train import PRESETS, portkit_gpt
    m = portkit_gpt(PRESETS["tiny"], 64).eval()
    dev = m.wte.weight.device
    idx = torch.randint(0, 512, (4, 16), device=dev, generator=torch.Generator(device=dev).manual_seed(0))
    valid = torch.ones_like(idx, dtype=torch.bool)
    valid[0, :5] = False  # one left-padded row
    runs = [m.generate(idx, valid, 40, eos_id=-1, pad_id=0, generator=torch.Generator(device=dev).manual_seed(1),
                       graphs=g) for g in (True, False)]
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


@pytest.mark.parametrize("temperature, top_k", [(1.0, 0), (0.7, 0), (0.7, 5), (1.3, 3)])
def test_sequence_logprobs_are_of_the_distribution_sampled_from(temperature, top_k):
    """PPO's ratio and KL need the log-probabilities generate() sampled with: logits / T, top-k kept."""
    m, tok = tiny(), ByteTokenizer()
    idx = torch.randint(0, 256, (3, 4))
    seq, valid = m.generate(idx, torch.ones_like(idx, dtype=torch.bool), 5, tok.eos_id, tok.pad_id, temperature,
                            top_k, torch.Generator().manual_seed(1))
    got = sequence_logprobs(m, seq, valid, 4, temperature, top_k)
    want = []
    for t in range(4, seq.shape[1]):  # token by token, as the sampler saw them
        logits = m(seq[:, :t], valid=valid[:, :t]) / temperature
        if top_k:
            logits = logits.masked_fill(logits < logits.topk(top_k).values[:, -1:], float("-inf"))
        want.append(torch.log_softmax(logits, -1).gather(1, seq[:, t:t + 1]))
    want = torch.cat(want, 1).masked_fill(~valid[:, 4:], 0)
    assert torch.allclose(got.masked_fill(~valid[:, 4:], 0), want, atol=1e-4)
    assert torch.isfinite(got[valid[:, 4:]]).all()  # every sampled token is inside the top k
