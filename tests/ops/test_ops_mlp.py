"""The GeLU MLP op: references against autograd of the composition, the served path in eager
and under torch.compile, the GPT's choice of it, cuBLASLt's operand layouts, and on a GPU the
cuBLASLt epilogues against the references."""
import pytest
import torch
import torch.nn.functional as F

import portkit
import portkit.ops as ops
from portkit.ops import cublaslt, mlp


def _inputs(n, d, f, bias, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(0)
    t = [torch.randn(n, d, generator=g), torch.randn(f, d, generator=g) * d ** -0.5,
         torch.randn(f, generator=g) * 0.5, torch.randn(d, f, generator=g) * f ** -0.5, torch.randn(d, generator=g) * 0.5]
    t = [x.to(device, dtype) for x in t]
    if not bias:
        t[2] = t[4] = None
    return t, torch.randn(n, d, generator=g).to(device, dtype)


def _composition(x, w1, b1, w2, b2):
    return F.linear(F.gelu(F.linear(x, w1, b1), approximate="tanh"), w2, b2)


def _grads(fn, inputs, dy):
    leaves = [t.detach().requires_grad_() if t is not None else None for t in inputs]
    y = fn(*leaves)
    return [y, *torch.autograd.grad(y, [t for t in leaves if t is not None], dy)]


@pytest.mark.parametrize("bias", [True, False])
def test_references_match_autograd_of_the_composition(bias, close):
    (x, w1, b1, w2, b2), dy = _inputs(37, 24, 56, bias)
    y, z, h = mlp.gelu_mlp_fwd(x, w1, b1, w2, b2)
    got = [y, *(g for g in mlp.gelu_mlp_bwd(dy, x, z, h, w1, b1, w2, b2) if g.numel())]
    want = _grads(_composition, (x, w1, b1, w2, b2), dy)
    want = [want[0], want[1], want[2], *([want[3]] if bias else []), want[-2 if bias else -1], *([want[-1]] if bias else [])]
    for name, a, c in zip(("y", "dx", "dw1", "db1", "dw2", "db2") if bias else ("y", "dx", "dw1", "dw2"), got, want):
        close(a, c, torch.float32, name)


@pytest.fixture
def served(serve_counting):
    """gelu_mlp served on the CPU by counting wrappers of the references."""
    return serve_counting({"gelu_mlp_fwd": mlp.gelu_mlp_fwd, "gelu_mlp_bwd": mlp.gelu_mlp_bwd})


@pytest.mark.parametrize("compiled", [False, True])
def test_the_served_op_runs_and_differentiates_eager_and_compiled(served, compiled, close):
    (x, w1, b1, w2, b2), dy = _inputs(16, 8, 32, True, torch.bfloat16)
    x, dy = x.view(2, 8, 8), dy.view(2, 8, 8)
    fn = torch.compile(ops.gelu_mlp, backend="aot_eager") if compiled else ops.gelu_mlp
    got = _grads(fn, (x, w1, b1, w2, b2), dy)
    assert served == ["gelu_mlp_fwd", "gelu_mlp_bwd"]
    want = _grads(lambda *a: _composition(*(t.float() for t in a)), (x, w1, b1, w2, b2), dy.float())
    for name, a, c in zip(("y", "dx", "dw1", "db1", "dw2", "db2"), got, want):
        close(a.float(), c.float(), torch.bfloat16, name)


def test_the_gpt_compiles_its_mlp_op_in_one_graph(served, gpt_one_graph):
    gpt_one_graph()
    assert "gelu_mlp_fwd" in served


def test_unserved_or_fp32_or_wrapped_linears_take_the_composition(served, close):
    (x, w1, b1, w2, b2), _ = _inputs(16, 8, 32, True)
    close(ops.gelu_mlp(x, w1, b1, w2, b2), _composition(x, w1, b1, w2, b2), torch.float32, "fp32")
    assert served == []  # fp32 is the composition's
    from portkit.models.gpt import GPTConfig, MLP
    block = MLP(GPTConfig(n_layer=1, n_head=2, n_embd=8, block_size=8, vocab_size=16, mlp="gelu", bias=True))
    block = block.to(torch.bfloat16)
    block.c_fc.register_forward_pre_hook(lambda m, a: None)  # as ZeRO-3 and tensor parallelism hook it
    block(x.bfloat16())
    assert served == []
    block.c_fc._forward_pre_hooks.clear()
    block(x.bfloat16())
    assert served == ["gelu_mlp_fwd"]


def test_cublaslt_operands_are_row_or_column_major():
    a = torch.empty(6, 16)
    assert cublaslt.operand(a) == (cublaslt._OP_N, 16, 6, 16)   # a^T stored (16, 6)
    assert cublaslt.operand(a.t()) == (cublaslt._OP_T, 16, 6, 16)  # a stored (16, 6), used transposed
    with pytest.raises(cublaslt.Unsupported, match="neither"):
        cublaslt.operand(a[:, ::2])


def test_cublaslt_is_not_offered_without_a_cuda_build(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    assert cublaslt.available() is False


class _Clock:
    """A device stand-in for cublaslt.fastest: launches advance a clock, events read it."""

    def __init__(self, cost, spike):
        self.now, self.cost, self.spike, self.launches = 0.0, cost, spike, 0

    def launch(self, r):
        if self.cost[r] is None:
            return 7  # cuBLAS status: not supported
        self.launches += 1
        self.now += self.cost[r] + self.spike.get(self.launches, 0.0)
        return 0

    @property
    def Event(self):
        clock = self

        class Event:
            def __init__(self, enable_timing):
                self.t = None

            def record(self):
                self.t = clock.now

            def synchronize(self):
                pass

            def elapsed_time(self, other):
                return other.t - self.t
        return Event


def test_cublaslt_tuning_keeps_the_fastest_through_one_slow_round():
    cost = [1.0, 0.8, None, 0.9]  # candidate 2 fails to launch
    # one swing of the device (a neighbour's load, clocks) during candidate 1's first timing
    clock = _Clock(cost, {3 + cublaslt.TUNE_REPEATS + 1: 5.0})  # after 3 warm launches and candidate 0
    times = cublaslt.fastest([0, 1, 2, 3], clock.launch, clock)
    assert times[2] == float("inf")
    assert min(range(4), key=times.__getitem__) == 1
    assert times[1] == pytest.approx(0.8 * cublaslt.TUNE_REPEATS)
    assert clock.launches == 3 + 3 * cublaslt.TUNE_ROUNDS * cublaslt.TUNE_REPEATS


@pytest.mark.gpu
@pytest.mark.parametrize("n,d,f", [(1024, 256, 1024), (16, 512, 2048), (37, 64, 256), (40, 60, 200)])
@pytest.mark.parametrize("bias", [True, False])
def test_cublaslt_epilogues_match_the_references_gpu(gpu, close, n, d, f, bias):
    if not cublaslt.available():
        pytest.skip("no cuBLASLt in this torch build")
    (x, w1, b1, w2, b2), dy = _inputs(n, d, f, bias, torch.bfloat16, gpu)
    ref, got = mlp.gelu_mlp_fwd(x, w1, b1, w2, b2), mlp.lt_fwd(x, w1, b1, w2, b2)
    for name, a, c in zip("yzh", got, ref):
        close(a, c, torch.bfloat16, name)
    rb, gb = mlp.gelu_mlp_bwd(dy, x, *ref[1:], w1, b1, w2, b2), mlp.lt_bwd(dy, x, *ref[1:], w1, b1, w2, b2)
    for name, a, c in zip(("dx", "dw1", "db1", "dw2", "db2"), gb, rb):
        close(a, c, torch.bfloat16, name)
    portkit.synchronize()


@pytest.mark.triton
@pytest.mark.parametrize("shape", [(1, 8), (37, 300), (1000, 24), (0, 16)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_column_sum_kernel_matches_torch(kdev, close, shape, dtype, seeded):
    """Rows in slabs that do not divide evenly, columns past one block, an empty matrix."""
    from portkit.ops.reduce_triton import column_sum
    x = torch.randn(shape, device=kdev).to(dtype)
    got = column_sum(x)
    assert got.dtype == torch.float32 and got.shape == (shape[1],)
    close(got, x.float().sum(0), torch.float32, "column sum", scale=4)


def test_cublaslt_is_not_offered_without_triton(monkeypatch):
    """Its backward sums the bias gradients with a Triton kernel: CUDA without triton keeps the composition."""
    from types import SimpleNamespace
    from portkit.backend import Capabilities
    from portkit.ops import builtin

    def cuda(triton):
        return SimpleNamespace(device_type="cuda", capabilities=lambda: Capabilities(triton=triton))
    monkeypatch.setattr(cublaslt, "available", lambda: True)
    assert builtin.runs_cublaslt(cuda(True)) and not builtin.runs_cublaslt(cuda(False))


@pytest.mark.parametrize("f", [2048, 6144, 8192])
def test_column_sum_launches_one_wave(f):
    """At most PROGRAMS_PER_SM programs a multiprocessor (an H100's 132), so that none runs
    alone in a second wave; the 256-column launch once started 544 for 16384 x 8192."""
    pytest.importorskip("triton")
    from portkit.ops import reduce_triton
    from portkit.ops._op import recording
    from portkit.ops._triton_utils import Asked, asking
    grids = []

    class Record:
        def __getitem__(self, grid):
            grids.append(grid)
            return lambda *args, **kwargs: None
    with asking(Asked(hip=False, sms=132)), recording(lambda kernel: Record()):
        reduce_triton.column_sum(torch.empty(16384, f, dtype=torch.bfloat16, device="meta"))
    (slabs, blocks), = grids
    assert blocks * reduce_triton.BLOCK_COLS >= f and slabs * blocks <= reduce_triton.PROGRAMS_PER_SM * 132
    assert slabs * blocks > reduce_triton.PROGRAMS_PER_SM * 132 * 0.9  # and the wave is nearly full
