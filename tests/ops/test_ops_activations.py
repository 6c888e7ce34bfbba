"""bias+GeLU and SwiGLU: reference vs torch, custom-op checks, Triton kernels vs reference."""
import pytest
import torch
import torch.nn.functional as F

import portkit.ops as ops
from portkit.ops import activations as A

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SMALL = [(37, 129), (3, 1000), (4, 64)]
GRID = [(1823, 781), (16384, 2048), (2048, 8192)]


def _grads(fn, inputs, dy):
    leaves = [t.detach().requires_grad_() if t is not None else None for t in inputs]
    y = fn(*leaves)
    return (y, *torch.autograd.grad(y, [t for t in leaves if t is not None], dy))


@pytest.mark.parametrize("with_bias", [True, False])
def test_bias_gelu_matches_torch_forward_and_backward(with_bias, close, seeded):
    x, b, dy = torch.randn(37, 129) * 3, torch.randn(129) if with_bias else None, torch.randn(37, 129)
    ours = _grads(ops.bias_gelu, (x, b), dy)
    theirs = _grads(lambda a, c=None: F.gelu(a + c if c is not None else a, approximate="tanh"), (x, b), dy)
    for name, a, c in zip(("y", "dx", "db"), ours, theirs):
        close(a, c, torch.float32, name)


def test_swiglu_matches_torch_forward_and_backward(close, seeded):
    x, dy = torch.randn(2, 37, 2 * 65) * 3, torch.randn(2, 37, 65)
    ours = _grads(ops.swiglu, (x,), dy)
    theirs = _grads(lambda a: F.silu(a[..., :65]) * a[..., 65:], (x,), dy)
    assert ours[0].shape == (2, 37, 65)
    for name, a, c in zip(("y", "dx"), ours, theirs):
        close(a, c, torch.float32, name)


def test_swiglu_rejects_an_odd_width():
    with pytest.raises(ValueError, match="must be even"):
        ops.swiglu(torch.randn(3, 7))


def test_activation_custom_ops_pass_opcheck(seeded):
    x, b = torch.randn(3, 5, 16, requires_grad=True), torch.randn(16, requires_grad=True)
    torch.library.opcheck(torch.ops.portkit.bias_gelu.default, (x, b))
    torch.library.opcheck(torch.ops.portkit.bias_gelu.default, (x, None))
    torch.library.opcheck(torch.ops.portkit.swiglu.default, (x,))


def _check_bias_gelu(dev, shape, dtype, with_bias, close):
    from portkit.ops import activations_triton as T
    n, h = shape
    x = (torch.randn(n, h, device=dev) * 3).to(dtype)
    b = torch.randn(h, device=dev).to(dtype) if with_bias else None
    dy = torch.randn(n, h, device=dev).to(dtype)
    close(T.bias_gelu_fwd(x, b), A.bias_gelu_fwd(x, b), dtype, "y")
    for name, a, c in zip(("dx", "db"), T.bias_gelu_bwd(dy, x, b), A.bias_gelu_bwd(dy, x, b)):
        close(a, c, dtype, name, scale=4)


def _check_swiglu(dev, shape, dtype, close):
    from portkit.ops import activations_triton as T
    n, h = shape
    x = (torch.randn(n, 2 * h, device=dev) * 3).to(dtype)
    dy = torch.randn(n, h, device=dev).to(dtype)
    close(T.swiglu_fwd(x), A.swiglu_fwd(x), dtype, "y")
    close(T.swiglu_bwd(dy, x), A.swiglu_bwd(dy, x), dtype, "dx")


@pytest.mark.triton
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("shape", SMALL)
@pytest.mark.parametrize("dtype", DTYPES)
def test_bias_gelu_kernel_matches_reference(kdev, close, dtype, shape, with_bias, seeded):
    _check_bias_gelu(kdev, shape, dtype, with_bias, close)


@pytest.mark.triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bias_gelu_kernel_is_finite_and_exact_at_extreme_inputs(kdev, close, dtype):
    """GeLU as z * sigmoid(2u): exp(-2u) overflows to inf far below zero, which must give 0 (not
    nan), and far above zero the value and the slope must be z and 1, as the reference's."""
    from portkit.ops import activations_triton as T
    z = torch.tensor([-1e4, -300.0, -60.0, -12.0, -1e-6, 0.0, 1e-6, 12.0, 60.0, 300.0, 1e4] * 3, device=kdev)
    x, dy = z.view(3, 11).to(dtype), torch.ones(3, 11, device=kdev, dtype=dtype)
    y, (dx, _) = T.bias_gelu_fwd(x, None), T.bias_gelu_bwd(dy, x, None)
    assert torch.isfinite(y).all() and torch.isfinite(dx).all()
    close(y, A.bias_gelu_fwd(x, None), dtype, "y")
    close(dx, A.bias_gelu_bwd(dy, x, None)[0], dtype, "dx")
    assert (y[:, :3] == 0).all() and (dx[:, :3] == 0).all() and (dx[:, -3:] == 1).all()


@pytest.mark.triton
@pytest.mark.parametrize("shape", SMALL)
@pytest.mark.parametrize("dtype", DTYPES)
def test_swiglu_kernel_matches_reference(kdev, close, dtype, shape, seeded):
    _check_swiglu(kdev, shape, dtype, close)


@pytest.mark.gpu
@pytest.mark.parametrize("shape", GRID)
@pytest.mark.parametrize("dtype", DTYPES)
def test_activation_kernels_grid_gpu(gpu, close, dtype, shape, seeded):
    _check_bias_gelu(gpu, shape, dtype, True, close)
    _check_swiglu(gpu, shape, dtype, close)
