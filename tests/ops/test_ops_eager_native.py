"""Eager autograd calls on small activations take torch's own C++ ops (portkit.ops._op.eager_native):
the same values and gradients as the fused path, which still serves no-grad calls, large
activations, other dtypes of parameters and torch.compile."""
import pytest
import torch
import torch.nn.functional as F

import portkit.ops as ops
from portkit.ops import _op, activations, mlp, norms

G = torch.Generator().manual_seed(0)


def _t(*shape, scale=1.0):
    return (torch.randn(*shape, generator=G) * scale).bfloat16()


# public op, its arguments, the registry ops a fused call runs (forward, backward)
CASES = {
    "layer_norm": (ops.layer_norm, lambda: (_t(4, 6, 32), _t(32), _t(32)), ("layer_norm_fwd", "layer_norm_bwd")),
    "add_layer_norm": (ops.add_layer_norm, lambda: (_t(4, 6, 32), _t(4, 6, 32), _t(32), _t(32)),
                       ("add_layer_norm_fwd", "layer_norm_bwd_add")),
    "rms_norm": (ops.rms_norm, lambda: (_t(4, 6, 32), _t(32)), ("rms_norm_fwd", "rms_norm_bwd")),
    "add_rms_norm": (ops.add_rms_norm, lambda: (_t(4, 6, 32), _t(4, 6, 32), _t(32)),
                     ("add_rms_norm_fwd", "rms_norm_bwd_add")),
    "bias_gelu": (ops.bias_gelu, lambda: (_t(4, 6, 32), _t(32)), ("bias_gelu_fwd", "bias_gelu_bwd")),
    "gelu_mlp": (ops.gelu_mlp, lambda: (_t(24, 16), _t(64, 16, scale=0.25), _t(64), _t(16, 64, scale=0.125), _t(16)),
                 ("gelu_mlp_fwd", "gelu_mlp_bwd")),
}
REFERENCES = {name: fn for mod in (norms, activations, mlp) for name, fn in vars(mod).items()
              if name.endswith(("_fwd", "_bwd", "_bwd_add")) and callable(fn)}


@pytest.fixture
def calls(impls, monkeypatch):
    """Every op of CASES served on the CPU by a counting wrapper of its reference, and the
    eager threshold at its shipped value."""
    seen = []
    for _, _, names in CASES.values():
        for op in names:
            ref = REFERENCES[op]
            impls.register(ops.OpImpl(op, lambda *a, op=op, ref=ref: seen.append(op) or ref(*a), lambda b: True, 99, "t"))
    monkeypatch.setattr(_op, "EAGER_FUSED_BYTES", 64 << 20)
    return seen


def _run(fn, args):
    leaves = [a.detach().requires_grad_() for a in args]
    out = fn(*leaves)
    outs = out if isinstance(out, tuple) else (out,)
    loss = sum((o.float() * torch.linspace(-1, 1, o.shape[-1])).sum() for o in outs)
    return [o.detach() for o in outs] + list(torch.autograd.grad(loss, leaves))


@pytest.mark.parametrize("case", CASES)
def test_small_eager_autograd_calls_take_torchs_ops_with_the_same_results(calls, monkeypatch, case, close):
    fn, make, names = CASES[case]
    args = make()
    native = _run(fn, args)
    assert calls == []
    monkeypatch.setattr(_op, "EAGER_FUSED_BYTES", 0)
    fused = _run(fn, args)
    assert calls == list(names)
    assert len(native) == len(fused)
    for i, (a, b) in enumerate(zip(native, fused)):
        close(a.float(), b.float(), torch.bfloat16, f"{case} output/grad {i}")


@pytest.mark.parametrize("case", CASES)
def test_the_fused_path_serves_no_grad_large_and_compiled_calls(calls, monkeypatch, case):
    fn, make, names = CASES[case]
    args = make()
    with torch.no_grad():
        fn(*args)
    assert calls == [names[0]]
    calls.clear()
    torch.compile(lambda *a: _run(fn, a), backend="aot_eager", fullgraph=False)(*args)
    assert calls[:1] == [names[0]] and names[1] in calls
    calls.clear()
    monkeypatch.setattr(_op, "EAGER_FUSED_BYTES", args[0].numel() * args[0].element_size())
    _run(fn, args)
    assert calls == list(names)


def test_parameters_of_another_dtype_keep_the_fused_path(calls):
    x, w, b = _t(4, 32), _t(32).float(), _t(32).float()
    _run(ops.layer_norm, (x, w, b))
    assert calls == ["layer_norm_fwd", "layer_norm_bwd"]
    calls.clear()
    y = ops.layer_norm(x.requires_grad_(), w.bfloat16(), b.bfloat16())
    assert calls == [] and type(y.grad_fn).__name__ == "NativeLayerNormBackward0"
    assert torch.equal(y, F.layer_norm(x, (32,), w.bfloat16(), b.bfloat16()))
