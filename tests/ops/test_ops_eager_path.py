"""Eager calls take an autograd.Function over the custom ops' bodies; the custom ops stay for
torch.compile. Both paths must give the same values and gradients."""
import pytest
import torch

import portkit.ops as ops

T = torch.ops.portkit


def _cases():
    x, w, b = torch.randn(6, 40), torch.rand(40) + 0.5, torch.randn(40)
    return [("rms_norm", lambda a, c: ops.rms_norm(a, c), lambda a, c: T.rms_norm(a, c, 1e-6)[0], [x, w]),
            ("layer_norm", lambda a, c, d: ops.layer_norm(a, c, d), lambda a, c, d: T.layer_norm(a, c, d, 1e-5)[0],
             [x, w, b]),
            ("bias_gelu", ops.bias_gelu, T.bias_gelu, [x, b]),
            ("swiglu", ops.swiglu, T.swiglu, [x]),
            ("softmax", lambda a: ops.scaled_masked_softmax(a, None, 0.5, True),
             lambda a: T.scaled_masked_softmax(a, None, 0.5, True), [torch.randn(2, 3, 5, 5)])]


@pytest.mark.parametrize("case", _cases(), ids=lambda c: c[0])
def test_eager_path_matches_the_custom_op(case, seeded):
    _, eager, custom, inputs = case
    a = [t.clone().requires_grad_() for t in inputs]
    b = [t.clone().requires_grad_() for t in inputs]
    ya, yb = eager(*a), custom(*b)
    torch.testing.assert_close(ya, yb)
    dy = torch.randn_like(ya)
    torch.testing.assert_close(torch.autograd.grad(ya, a, dy), torch.autograd.grad(yb, b, dy))


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_linear_cross_entropy_eager_path_matches_the_custom_op(reduction, seeded):
    h, w, t = torch.randn(10, 16), torch.randn(30, 16), torch.randint(0, 30, (10,))
    a, b = [h.clone().requires_grad_(), w.clone().requires_grad_()], [h.clone().requires_grad_(), w.clone().requires_grad_()]
    la = ops.linear_cross_entropy(*a, t, reduction=reduction)
    lb = T.linear_cross_entropy(*b, t, None, -100, reduction, reduction != "none")[0]
    torch.testing.assert_close(la, lb)
    g = torch.rand_like(la)
    torch.testing.assert_close(torch.autograd.grad(la, a, g), torch.autograd.grad(lb, b, g))


def test_no_grad_calls_skip_autograd(seeded):
    x = torch.randn(3, 8, requires_grad=True)
    with torch.no_grad():
        y = ops.rms_norm(x)
    assert y.grad_fn is None and not y.requires_grad
    assert ops.rms_norm(x).grad_fn is not None
