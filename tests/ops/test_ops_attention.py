"""Causal attention on (B, T, H, D): the references against autograd of torch's SDPA, the
served op in eager and under torch.compile (one graph in the GPT), and the SDPA path where
no implementation serves."""
import pytest
import torch
import torch.nn.functional as F

import portkit.ops as ops
from portkit.ops import attention


def _qkv(B=2, T=9, H=3, D=16, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(B, T, H, 3, D, generator=g).to(device, dtype)  # q, k, v interleaved per head, as the GPT's
    return qkv, torch.randn(B, T, H, D, generator=g).to(device, dtype)


def _sdpa(q, k, v):
    return F.scaled_dot_product_attention(q.transpose(1, 2).float(), k.transpose(1, 2).float(),
                                          v.transpose(1, 2).float(), is_causal=True).transpose(1, 2)


def _grads(fn, qkv, dy):
    leaf = qkv.detach().requires_grad_()
    y = fn(*leaf.unbind(3))
    return [y, *torch.autograd.grad(y, leaf, dy)[0].unbind(3)]


def test_references_match_autograd_of_sdpa(close):
    qkv, dy = _qkv(dtype=torch.float64)
    q, k, v = qkv.unbind(3)
    out, lse = attention.causal_attention_fwd(q, k, v, 16 ** -0.5)
    got = [out, *attention.causal_attention_bwd(dy, q, k, v, out, lse, 16 ** -0.5)]
    s = torch.einsum("bthd,bshd->bhts", q, k) * 16 ** -0.5
    close(lse.double(), torch.logsumexp(s.masked_fill(torch.ones(9, 9, dtype=torch.bool).triu(1), float("-inf")), -1),
          torch.float32, "lse")
    for name, a, c in zip(("y", "dq", "dk", "dv"), got, _grads(_sdpa, qkv, dy)):
        close(a.double(), c.double(), torch.float32, name)


@pytest.fixture
def served(serve_counting):
    """causal_attention served on the CPU by counting wrappers of the references."""
    return serve_counting({"causal_attention_fwd": attention.causal_attention_fwd,
                           "causal_attention_bwd": attention.causal_attention_bwd})


@pytest.mark.parametrize("compiled", [False, True])
def test_the_served_op_runs_and_differentiates_eager_and_compiled(served, compiled, close):
    qkv, dy = _qkv(dtype=torch.bfloat16)
    fn = torch.compile(ops.causal_attention, backend="aot_eager", fullgraph=True) if compiled else ops.causal_attention
    got = _grads(fn, qkv, dy)
    assert served == ["causal_attention_fwd", "causal_attention_bwd"]
    for name, a, c in zip(("y", "dq", "dk", "dv"), got, _grads(_sdpa, qkv.float(), dy.float())):
        close(a.float(), c.float(), torch.bfloat16, name)


def test_the_gpt_compiles_its_attention_op_in_one_graph(served, gpt_one_graph):
    gpt_one_graph()
    assert "causal_attention_fwd" in served


def test_unserved_or_fp32_take_sdpa_and_masks_keep_it(served, close):
    qkv, _ = _qkv()
    with pytest.raises(ValueError, match="must share"):
        ops.causal_attention(qkv[:, :4, :, 0], qkv[..., 1], qkv[..., 2])
    close(ops.causal_attention(*qkv.unbind(3)), _sdpa(*qkv.unbind(3)), torch.float32, "fp32")
    assert served == []  # fp32 is SDPA's
    from portkit.models.gpt import GPT, GPTConfig
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=64)).to(torch.bfloat16)
    idx = torch.randint(0, 64, (2, 16))
    model(idx, idx, valid=torch.ones(2, 16, dtype=torch.bool))  # a padding mask: SDPA with the mask
    assert served == []
    model(idx, idx)
    assert served == ["causal_attention_fwd"]
