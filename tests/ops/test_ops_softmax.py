"""Scaled masked softmax: reference vs torch, custom-op checks, Triton kernels vs reference."""
import pytest
import torch

import portkit.ops as ops
from portkit.ops import softmax as S

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SMALL = [(2, 3, 7, 9), (1, 2, 5, 129), (1, 1, 3, 1000)]
GRID = [(4, 16, 1024, 1024), (2, 8, 777, 1823), (1, 4, 128, 32768)]


def _torch(x, mask, scale, causal):
    s = x.float() * scale
    tq, tk = x.shape[-2:]
    if causal:
        s = s.masked_fill(torch.ones(tq, tk, dtype=torch.bool).triu(1), float("-inf"))
    if mask is not None:
        s = s.masked_fill(mask, float("-inf"))
    return torch.softmax(s, -1)


@pytest.mark.parametrize("causal", [False, True])
def test_softmax_matches_torch_forward_and_backward(causal, close, seeded):
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    mask = torch.rand(2, 1, 1, 6) < 0.3
    mask[..., 0] = False  # no row fully masked here
    y = ops.scaled_masked_softmax(x, mask, 0.5, causal)
    want = _torch(x, mask, 0.5, causal)
    close(y, want, torch.float32, "y")
    dy = torch.randn_like(y)
    close(torch.autograd.grad(y, x, dy)[0], torch.autograd.grad(want, x, dy)[0], torch.float32, "dx")


def test_a_fully_masked_row_gives_zeros_and_zero_gradient():
    x = torch.randn(1, 1, 2, 4, requires_grad=True)
    mask = torch.tensor([[True] * 4, [False, True, False, True]])
    y = ops.scaled_masked_softmax(x, mask, 1.0)
    assert torch.equal(y[0, 0, 0], torch.zeros(4))
    assert abs(y[0, 0, 1].sum().item() - 1) < 1e-6 and y[0, 0, 1, 1] == 0
    y.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_softmax_rejects_a_mask_that_does_not_broadcast():
    with pytest.raises(ValueError, match="does not broadcast"):
        ops.scaled_masked_softmax(torch.randn(1, 2, 3, 4), torch.zeros(5, 4, dtype=torch.bool), 1.0)


def test_softmax_custom_op_passes_opcheck(seeded):
    x = torch.randn(2, 3, 4, 5, requires_grad=True)
    torch.library.opcheck(torch.ops.portkit.scaled_masked_softmax.default, (x, torch.rand(4, 5) < 0.3, 0.7, True))
    torch.library.opcheck(torch.ops.portkit.scaled_masked_softmax.default, (x, None, 0.7, False))


def _masks(shape, dev):
    B, nh, tq, tk = shape
    return [None, torch.rand(B, 1, 1, tk, device=dev) < 0.3, torch.rand(tq, tk, device=dev) < 0.9]


def _check(dev, shape, dtype, close):
    from portkit.ops import softmax_triton as ST
    x = (torch.randn(shape, device=dev) * 3).to(dtype)
    dy = torch.randn(shape, device=dev).to(dtype)
    for mask in _masks(shape, dev):
        for causal in (False, True):
            what = f"mask={None if mask is None else tuple(mask.shape)} causal={causal}"
            ref = S.softmax_fwd(x, mask, 0.125, causal)
            close(ST.softmax_fwd(x, mask, 0.125, causal), ref, dtype, "y " + what)
            close(ST.softmax_bwd(dy, ref, 0.125), S.softmax_bwd(dy, ref, 0.125), dtype, "dx " + what, scale=2)


@pytest.mark.triton
@pytest.mark.parametrize("shape", SMALL)
@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_kernel_matches_reference(kdev, close, dtype, shape, seeded):
    _check(kdev, shape, dtype, close)


@pytest.mark.gpu
@pytest.mark.parametrize("shape", GRID)
@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_kernel_grid_gpu(gpu, close, dtype, shape, seeded):
    _check(gpu, shape, dtype, close)
