"""torch.compile traces through the portkit ops' bodies: the chosen implementation's torch
ops (CPU: the references) or Triton kernels (GPU) land in the compiled graphs, with the
same values and gradients as eager; linear_cross_entropy stays one op; torch.export keeps
each op whole."""
import pytest
import torch
from functorch.compile import make_boxed_func
from torch._dynamo.backends.common import aot_autograd

import portkit.ops as ops
from portkit.ops import registry


def _cases(dev):
    x, w, b = torch.randn(6, 40, device=dev), torch.rand(40, device=dev) + 0.5, torch.randn(40, device=dev)
    cos, sin = ops.rotary_tables(5, 8, device=dev)
    return {
        "rms_norm": (lambda a, c: ops.rms_norm(a, c), [x, w], ["_rms_fwd_kernel", "_norm_bwd_kernel"]),
        "layer_norm": (lambda a, c, d: ops.layer_norm(a, c, d), [x, w, b], ["_ln_fwd_kernel", "_norm_bwd_kernel"]),
        "add_rms_norm": (lambda a, r, c: torch.cat(ops.add_rms_norm(a, r, c)), [x, torch.randn_like(x), w],
                         ["_rms_fwd_kernel", "_norm_bwd_kernel"]),
        "add_layer_norm": (lambda a, r, c, d: torch.cat(ops.add_layer_norm(a, r, c, d)), [x, torch.randn_like(x), w, b],
                           ["_ln_fwd_kernel", "_norm_bwd_kernel"]),
        "bias_gelu": (ops.bias_gelu, [x, b], ["_bias_gelu_fwd_kernel", "_bias_gelu_bwd_kernel"]),
        "swiglu": (ops.swiglu, [x], ["_swiglu_fwd_kernel", "_swiglu_bwd_kernel"]),
        "rotary": (lambda q: ops.rotary(q, cos, sin), [torch.randn(2, 3, 5, 8, device=dev)], ["_rotary_kernel"]),
        "softmax": (lambda a: ops.scaled_masked_softmax(a, None, 0.5, True), [torch.randn(2, 3, 5, 5, device=dev)],
                    ["_softmax_fwd_kernel", "_softmax_bwd_kernel"]),
    }


NAMES = list(_cases("cpu"))


def _run(fn, inputs, seed=0):
    """-> output and the gradients of (output * fixed random weights) w.r.t. the inputs."""
    leaves = [t.clone().requires_grad_() for t in inputs]
    y = fn(*leaves)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed)).to(y.device)
    return y, torch.autograd.grad(y, leaves, dy)


def _compile_keeping_graphs(fn):
    graphs = []

    def keep(gm, example_inputs):
        graphs.append(gm.code)
        return make_boxed_func(gm.forward)

    return torch.compile(fn, backend=aot_autograd(fw_compiler=keep, bw_compiler=keep), fullgraph=True), graphs


@pytest.mark.parametrize("name", NAMES)
def test_compile_traces_into_the_op_body_on_cpu(name, seeded):
    fn, inputs, _ = _cases("cpu")[name]
    compiled, graphs = _compile_keeping_graphs(fn)
    y, grads = _run(compiled, inputs)
    ey, egrads = _run(fn, inputs)
    torch.testing.assert_close(y, ey)
    torch.testing.assert_close(grads, egrads)
    assert len(graphs) == 2, "expected a forward and a backward graph"
    for code in graphs:
        assert "torch.ops.portkit" not in code, f"an opaque portkit op was left in the graph:\n{code}"
        assert "torch.ops.aten" in code


def test_compiled_code_runs_no_portkit_dispatch(monkeypatch, seeded):
    calls = []
    dispatch = registry.dispatch
    monkeypatch.setattr(registry, "dispatch", lambda op: calls.append(op) or dispatch(op))
    fn = lambda x, w, b: ops.bias_gelu(ops.layer_norm(x, w, b), b)  # noqa: E731
    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    inputs = [torch.randn(6, 40), torch.rand(40) + 0.5, torch.randn(40)]
    _run(compiled, inputs)
    assert calls, "tracing chooses the implementations"
    calls.clear()
    y, _ = _run(compiled, [t + 1 for t in inputs])
    assert calls == [], f"compiled code dispatched {calls} at run time"
    torch.testing.assert_close(y, fn(*[t + 1 for t in inputs]))


def test_linear_cross_entropy_stays_one_op_under_compile(seeded):
    target = torch.arange(10) % 7
    fn = lambda h, v: ops.linear_cross_entropy(h, v, target)  # noqa: E731
    inputs = [torch.randn(10, 16), torch.randn(30, 16)]
    compiled, graphs = _compile_keeping_graphs(fn)
    y, grads = _run(compiled, inputs)
    ey, egrads = _run(fn, inputs)
    torch.testing.assert_close(y, ey)
    torch.testing.assert_close(grads, egrads)
    assert "torch.ops.portkit.linear_cross_entropy.default" in graphs[0]


def test_export_keeps_the_portkit_op_whole():
    class M(torch.nn.Module):
        def forward(self, x, w):
            return ops.rms_norm(x, w)

    ep = torch.export.export(M(), (torch.randn(3, 8), torch.rand(8)))
    assert "torch.ops.portkit.rms_norm.default" in ep.graph_module.code


@pytest.mark.gpu
@pytest.mark.parametrize("name", NAMES)
def test_inductor_launches_the_triton_kernels_gpu(name, gpu, seeded, close):
    from torch._inductor.utils import run_and_get_code
    fn, inputs, kernels = _cases(gpu)[name]
    torch._dynamo.reset()
    registry.set_mode("triton")  # the Triton kernels, whatever ranks first on this machine
    try:
        compiled = torch.compile(fn, fullgraph=True)
        (y, grads), code = run_and_get_code(lambda: _run(compiled, inputs))
        ey, egrads = _run(fn, inputs)
    finally:
        registry.set_mode(None)
    close(y, ey, torch.float32, "output")
    for g, e in zip(grads, egrads):
        close(g, e, torch.float32, "grad", scale=10)
    code = "\n".join(code)
    assert "torch.ops.portkit" not in code
    for kernel in kernels:
        assert kernel in code, f"{kernel} is not launched from inductor's code"
