"""Causal attention on (B, T, H, D): the references against autograd of torch's SDPA, the
served op in eager and under torch.compile (one graph in the GPT), and the SDPA path where
no implementation serves."""
import pytest
import torch
import torch.nn.functional as F

import portkit
import portkit.ops as ops
from portkit.ops import attention, builtin


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


@pytest.mark.parametrize("block", [1024, 4, 1])
def test_references_match_autograd_of_sdpa(close, monkeypatch, block):
    """In one block of query rows (T = 9) and in several: 4, 4 and 1 rows; nine of one."""
    monkeypatch.setattr(attention, "BLOCK", block)
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


def test_the_backward_writes_into_given_views_of_one_gradient():
    qkv, dy = _qkv(dtype=torch.float64)
    q, k, v = qkv.unbind(3)
    out, lse = attention.causal_attention_fwd(q, k, v, 0.25)
    buf = torch.full_like(qkv, float("nan"))
    got = attention.causal_attention_bwd(dy, q, k, v, out, lse, 0.25, *buf.unbind(3))
    assert [g.data_ptr() for g in got] == [b.data_ptr() for b in buf.unbind(3)]
    for a, c in zip(buf.unbind(3), attention.causal_attention_bwd(dy, q, k, v, out, lse, 0.25)):
        assert torch.equal(a, c)


@pytest.mark.parametrize("compiled", [False, True])
def test_the_packed_op_gives_the_qkv_projection_one_gradient(served, compiled, close):
    qkv, dy = _qkv(dtype=torch.bfloat16)
    fn = ops.causal_attention_packed
    fn = torch.compile(fn, backend="aot_eager", fullgraph=True) if compiled else fn
    leaf = qkv.detach().requires_grad_()
    y = fn(leaf)
    (g,) = torch.autograd.grad(y, leaf, dy)
    assert served == ["causal_attention_fwd", "causal_attention_bwd"]
    for name, a, c in zip(("y", "dq", "dk", "dv"), [y, *g.unbind(3)], _grads(_sdpa, qkv.float(), dy.float())):
        close(a.float(), c.float(), torch.bfloat16, name)


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


def test_flash_attention_4_is_offered_only_on_cuda_with_the_package(monkeypatch):
    import importlib.metadata
    from types import SimpleNamespace

    def missing(dist):
        raise importlib.metadata.PackageNotFoundError(dist)
    hopper = SimpleNamespace(device_type="cuda", module=SimpleNamespace(get_device_capability=lambda: (9, 0)))
    ampere = SimpleNamespace(device_type="cuda", module=SimpleNamespace(get_device_capability=lambda: (8, 0)))
    monkeypatch.setattr(builtin, "_imports", lambda module, package: module == "flash_attn.cute.interface")
    monkeypatch.setattr(importlib.metadata, "version", lambda dist: "4.0.0b15" if dist == "flash-attn-4" else missing(dist))
    assert builtin.runs_fa4(hopper) is True
    assert builtin.runs_fa4(ampere) is False
    assert builtin.runs_fa4(SimpleNamespace(device_type="cpu")) is False
    monkeypatch.setattr(importlib.metadata, "version", missing)  # `flash_attn` alone is FlashAttention-2's package
    assert builtin.runs_fa4(hopper) is False


def test_a_package_that_fails_to_import_is_said_in_one_line_and_not_used(tmp_path, monkeypatch, capsys):
    (tmp_path / "broken_attn_pkg.py").write_text("raise ImportError(\"cannot import name 'Arch'\")\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert builtin._imports("broken_attn_pkg", "broken-attn") is False
    assert builtin._imports("broken_attn_pkg", "broken-attn") is False  # said once
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "broken-attn" in err[0] and "'Arch'" in err[0] and "Fix:" in err[0]
    assert builtin._imports("json", "json") is True


def test_flash_attention_4_passes_inputs_it_cannot_take_to_the_reference_saying_why(monkeypatch, capsys, close):
    from types import SimpleNamespace
    from portkit.ops import attention_fa4
    cap = SimpleNamespace(module=SimpleNamespace(get_device_capability=lambda device: (9, 0)))  # as an H100
    monkeypatch.setattr(attention_fa4.runtime, "active", lambda: cap)
    attention_fa4.say_once.cache_clear()  # said once a process: this test must hear it
    bf = torch.zeros(2, 9, 3, 64, dtype=torch.bfloat16)
    assert attention_fa4.unsupported(bf, bf, bf) is None
    assert "head dims 12, 12" in attention_fa4.unsupported(*[bf[..., :12].contiguous()] * 3)
    assert "unit last stride" in attention_fa4.unsupported(bf.transpose(1, 3).contiguous().transpose(1, 3), bf, bf)
    qkv, dy = _qkv()  # fp32: the kernels take fp16 and bf16 only
    q, k, v = qkv.unbind(3)
    out, lse = attention_fa4.fa4_fwd(q, k, v, 0.25)  # never reaches flash_attn (not installed here)
    ref_out, ref_lse = attention.causal_attention_fwd(q, k, v, 0.25)
    assert torch.equal(out, ref_out) and torch.equal(lse, ref_lse)
    for a, c in zip(attention_fa4.fa4_bwd(dy, q, k, v, out, lse, 0.25),
                    attention.causal_attention_bwd(dy, q, k, v, out, lse, 0.25)):
        assert torch.equal(a, c)
    err = capsys.readouterr().err.splitlines()
    assert err == ["portkit.ops.causal_attention: dtypes torch.float32, torch.float32, torch.float32: "
                   "FlashAttention-4 takes fp16 or bf16 alike; this call runs the fp32 reference"]


@pytest.mark.parametrize("T", [512, 1000])
def test_flash_attention_4_matches_the_references_gpu(gpu, close, T):
    if not builtin.runs_fa4(portkit.backend()):
        pytest.skip("flash-attn-4 is not installed here, or the GPU is not Hopper or Blackwell")
    from portkit.ops import attention_fa4
    qkv, dy = _qkv(2, T, 4, 128, torch.bfloat16, portkit.device())
    q, k, v = qkv.unbind(3)
    out, lse = attention_fa4.fa4_fwd(q, k, v, 128 ** -0.5)
    ref_out, ref_lse = attention.causal_attention_fwd(q, k, v, 128 ** -0.5)
    close(out.float(), ref_out.float(), torch.bfloat16, "y")
    close(lse, ref_lse, torch.float32, "lse")
    buf = torch.full_like(qkv, float("nan"))
    into = attention_fa4.fa4_bwd(dy, q, k, v, out, lse, 128 ** -0.5, *buf.unbind(3))
    assert [g.data_ptr() for g in into] == [b.data_ptr() for b in buf.unbind(3)]
    for name, a, b, c in zip(("dq", "dk", "dv"), attention_fa4.fa4_bwd(dy, q, k, v, out, lse, 128 ** -0.5),
                             buf.unbind(3), attention.causal_attention_bwd(dy, q, k, v, ref_out, ref_lse, 128 ** -0.5)):
        close(a.float(), c.float(), torch.bfloat16, name)
        close(b.float(), c.float(), torch.bfloat16, name + " into the packed gradient")


FA4_COMPILE = """
import os, torch
torch.cuda.get_device_capability = lambda *a: (9, 0)  # no GPU here: compile for an H100/H200
from torch._subclasses.fake_tensor import FakeTensorMode
from portkit.ops import attention_fa4
with FakeTensorMode(allow_non_fake_inputs=True):
    qkv = torch.empty(2, 1000, 4 * 3 * 128, dtype=torch.bfloat16, device="cuda")
    q, k, v = qkv.view(2, 1000, 4, 3, 128).unbind(3)  # the GPT's strided views of its qkv projection
    out, lse = attention_fa4.fa4_fwd(q, k, v, 0.088)
    dqkv = torch.empty_like(qkv).view(2, 1000, 4, 3, 128)
    grads = attention_fa4.fa4_bwd(torch.empty_like(out), q, k, v, out, lse, 0.088, *dqkv.unbind(3))
    print(tuple(out.shape), tuple(lse.shape), lse.dtype, [g.stride() for g in grads])
print(sorted(f.split("_object_at")[0].rsplit("cute", 1)[-1] for f in os.listdir(".") if f.endswith(".sm_90a.cubin")))
"""


def test_flash_attention_4_calls_compile_for_sm90a_on_the_cpu(tmp_path):
    """The internal FlashAttention-4 entry points portkit calls, compiled by the CuTe DSL for
    sm_90a without a GPU (FakeTensor inputs): their signatures and outputs as portkit uses them."""
    pytest.importorskip("flash_attn.cute.interface", reason="flash-attn-4 is not installed here")
    import os, subprocess, sys
    env = dict(os.environ, CUTE_DSL_ARCH="sm_90a", CUTE_DSL_KEEP="cubin", CUTE_DSL_NO_CACHE="1")
    done = subprocess.run([sys.executable, "-c", FA4_COMPILE], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    shapes, kernels = done.stdout.splitlines()[-2:]
    assert shapes == "(2, 1000, 4, 128) (2, 4, 1000) torch.float32 " + str([(1536000, 1536, 384, 1)] * 3)
    assert kernels == ("['flash_bwd_postprocessFlashAttentionBackwardPostprocess', 'flash_bwd_preprocessFlashAttentionBack"
                       "wardPreprocess', 'flash_bwd_sm90FlashAttentionBackwardSm90', 'flash_fwd_sm90FlashAttentionForwardSm90']")
