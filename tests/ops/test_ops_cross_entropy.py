"""Fused linear + cross-entropy: reference vs torch on full logits, chunking, custom-op
checks, the Triton cross-entropy step vs reference."""
import pytest
import torch
import torch.nn.functional as F

import portkit.ops as ops
from portkit.ops import cross_entropy as C

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    """The tests' shapes are tiny: without the floor they still run in several chunks."""
    monkeypatch.setattr(C, "MIN_CHUNK_MACS", 0)


def _data(n, d, v, dtype=torch.float32, device="cpu", bias=False):
    h = torch.randn(n, d, device=device).to(dtype)
    w = (torch.randn(v, d, device=device) / d ** 0.5).to(dtype)
    t = torch.randint(0, v, (n,), device=device)
    t[::7] = -100
    b = torch.randn(v, device=device).to(dtype) if bias else None
    return h, w, t, b


def _loss_and_grads(fn, h, w, t, b, reduction, g=None):
    leaves = [x.detach().requires_grad_() if x is not None else None for x in (h, w, b)]
    loss = fn(leaves[0], leaves[1], t, leaves[2], reduction)
    g = torch.ones_like(loss) if g is None else g
    return (loss, *torch.autograd.grad(loss, [x for x in leaves if x is not None], g))


def _torch_ce(h, w, t, b, reduction):
    logits = h.float() @ w.float().t() + (b.float() if b is not None else 0)
    return F.cross_entropy(logits, t, reduction=reduction)


def _ours(h, w, t, b, reduction):
    return ops.linear_cross_entropy(h, w, t, b, reduction=reduction)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_linear_cross_entropy_matches_torch(reduction, bias, close, seeded):
    h, w, t, b = _data(37, 4, 50, bias=bias)  # 37 rows in chunks of 4: ten chunks
    g = torch.rand(37) if reduction == "none" else None
    ours = _loss_and_grads(_ours, h, w, t, b, reduction, g)
    theirs = _loss_and_grads(_torch_ce, h, w, t, b, reduction, g)
    for name, a, c in zip(("loss", "dh", "dw", "db"), ours, theirs):
        close(a, c, torch.float32, name, scale=3)


def test_the_chunks_are_smaller_than_the_logits():
    assert C.chunk_rows(37, 4, 50) == 4  # a chunk's logits about as large as hidden, as Liger-Kernel's
    rows = C.chunk_rows(16384, 2048, 50304)
    assert rows * 50304 <= 2 * C.CHUNK_BUDGET * 16384 * 2048 and rows <= 16384 // 4  # >= 4 chunks
    assert C.chunk_rows(4, 4096, 10) == 4


def test_a_narrow_hidden_gets_chunks_of_at_least_min_chunk_macs(monkeypatch):
    monkeypatch.setattr(C, "MIN_CHUNK_MACS", 1 << 36)
    assert C.chunk_rows(16384, 768, 50304) == 2048  # GPT-2 124M: 8 chunks, not 64 of 256 rows
    assert C.chunk_rows(16384, 1024, 50304) == 2048  # 350M: 8, not 32 of 512
    assert C.chunk_rows(8192, 4096, 128256) == 256  # the budget already asks for more: unchanged
    assert C.chunk_rows(16384, 2048, 50304) == 1024
    assert C.chunk_rows(100, 768, 50304) == 100  # never more rows than there are


def test_the_chunk_loop_never_materialises_all_logits(seeded):
    seen, where = [], set()

    def spy(logits, *args):
        seen.append(tuple(logits.shape))
        where.add(logits.data_ptr())
        return C.cross_entropy_chunk(logits, *args)
    h, w, t, _ = _data(37, 4, 50)
    C.chunked_linear_cross_entropy(h, w, t, None, -100, torch.tensor(1.0), spy)
    assert seen == [(4, 50)] * 9 + [(1, 50)]
    assert len(where) == 1  # every chunk in one buffer: two chunks of logits are never alive at once


def test_weight_gradient_accumulates_in_the_weight_dtype_and_is_scaled_in_place(seeded):
    h, w, t, _ = _data(37, 4, 50, torch.bfloat16)
    _, gh, gw, _ = C.linear_cross_entropy_fwd(h, w, t, None, -100, torch.tensor(0.5))
    assert gw.dtype == torch.bfloat16 and gh.dtype == torch.bfloat16  # no fp32 V x d buffer
    h.requires_grad_(), w.requires_grad_()
    loss = ops.linear_cross_entropy(h, w, t)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        loss.backward()


@pytest.mark.parametrize("n", [0, 37])
def test_the_weight_gradient_never_reads_an_unwritten_buffer(n, monkeypatch, close, seeded):
    """The first chunk writes grad_W into a fresh buffer (no zeroed V x d buffer read back);
    with no rows at all it is zeros. Fresh buffers are NaN here, so a value never written shows."""
    full = torch.full_like
    monkeypatch.setattr(torch, "empty_like", lambda x, **kw: full(x, float("nan"), **kw))
    h, w, t, b = _data(n, 4, 10, bias=True)
    _, _, gw, gb = C.linear_cross_entropy_fwd(h, w, t, b, -100, torch.tensor(1.0))
    logits = (h @ w.t() + b).requires_grad_()
    F.cross_entropy(logits, t, reduction="sum").backward()
    close(gw, logits.grad.t() @ h, torch.float32, "dw")
    close(gb, logits.grad.sum(0), torch.float32, "db")


def test_without_grad_no_gradients_are_computed(seeded):
    h, w, t, _ = _data(8, 4, 10)
    with torch.no_grad():
        loss, gh, gw, gb = torch.ops.portkit.linear_cross_entropy(h, w, t, None, -100, "mean", False)
    assert gh.numel() == gw.numel() == gb.numel() == 0
    assert abs(loss.item() - _torch_ce(h, w, t, None, "mean").item()) < 1e-5


def test_all_targets_ignored_gives_nan_mean_like_torch(seeded):
    h, w, t, _ = _data(4, 8, 10)
    t[:] = -100
    assert torch.isnan(ops.linear_cross_entropy(h, w, t)) and torch.isnan(_torch_ce(h, w, t, None, "mean"))


def test_bad_arguments_are_errors_that_say_what_was_expected():
    h, w, t, _ = _data(4, 8, 10)
    with pytest.raises(ValueError, match="reduction 'avg'"):
        ops.linear_cross_entropy(h, w, t, reduction="avg")
    with pytest.raises(ValueError, match=r"expected \(4,\) int64"):
        ops.linear_cross_entropy(h, w, t.int())


def test_linear_cross_entropy_custom_op_passes_opcheck(seeded):
    h, w, t, b = _data(9, 8, 12, bias=True)
    h.requires_grad_(), w.requires_grad_(), b.requires_grad_()
    for reduction, grads in (("mean", True), ("none", False), ("sum", False)):
        torch.library.opcheck(torch.ops.portkit.linear_cross_entropy.default, (h, w, t, b, -100, reduction, grads))


def _check_chunk(dev, shape, dtype, close):
    from portkit.ops import cross_entropy_triton as CT
    c, v = shape
    logits = (torch.randn(c, v, device=dev) * 4).to(dtype)
    t = torch.randint(0, v, (c,), device=dev)
    t[1] = -100
    for scale in (None, torch.tensor(0.25, device=dev), torch.rand(c, device=dev)):
        a, b = logits.clone(), logits.clone()
        close(CT.cross_entropy_chunk(a, t, -100, scale), C.cross_entropy_chunk(b, t, -100, scale), torch.float32,
              "loss", scale=10)
        close(a, b, dtype, "dlogits")


@pytest.mark.triton
@pytest.mark.parametrize("shape", [(6, 5000), (3, 129), (5, 8192)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_kernel_matches_reference(kdev, close, dtype, shape, seeded):
    _check_chunk(kdev, shape, dtype, close)


@pytest.mark.triton
def test_triton_linear_cross_entropy_matches_reference(kdev, close, seeded):
    from portkit.ops import cross_entropy_triton as CT
    h, w, t, b = _data(37, 4, 50, device=kdev, bias=True)
    scale = torch.tensor(0.1, device=kdev)
    for name, a, c in zip(("loss", "dh", "dw", "db"), CT.linear_cross_entropy_fwd(h, w, t, b, -100, scale),
                          C.linear_cross_entropy_fwd(h, w, t, b, -100, scale)):
        close(a, c, torch.float32, name, scale=3)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_cross_entropy_50k_vocab_gpu(gpu, close, dtype, seeded):
    from portkit.ops import registry
    assert registry.choose("linear_cross_entropy_fwd").name == "triton"
    _check_chunk(gpu, (1024, 50304), dtype, close)
    h, w, t, _ = _data(4096, 1024, 50304, dtype, gpu)
    ours = _loss_and_grads(_ours, h, w, t, None, "mean")
    ref = _loss_and_grads(lambda a, b, tt, bb, r: F.cross_entropy(a.float() @ b.float().t(), tt, reduction=r),
                          h, w, t, None, "mean")
    close(ours[0], ref[0], torch.float32, "loss", scale=10 if dtype == torch.float32 else 1000)
    for name, a, c in zip(("dh", "dw"), ours[1:], ref[1:]):
        # fp16 gradients summed over a 50k vocabulary: seen 1.62e-2 relative on H100
        close(a, c.to(dtype), dtype, name, scale=4 if dtype != torch.float16 else 8)
