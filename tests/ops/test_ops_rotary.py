"""Rotary embedding: reference vs a plain formula, custom-op checks, Triton kernel vs reference."""
import pytest
import torch

import portkit.ops as ops
from portkit.ops.rotary import rotary_bwd, rotary_fwd  # (ops.rotary is the function)

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SMALL = [(2, 3, 5, 24), (1, 2, 37, 64), (3, 1, 4, 6)]
GRID = [(4, 16, 2048, 128), (8, 12, 1023, 64), (1, 32, 4096, 96)]


def _plain(x, cos, sin):
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def test_rotary_matches_the_formula_and_its_gradient_is_the_inverse_rotation(close, seeded):
    x = torch.randn(2, 3, 5, 8, requires_grad=True)
    cos, sin = ops.rotary_tables(5, 8)
    y = ops.rotary(x, cos, sin)
    close(y, _plain(x, cos, sin), torch.float32, "y")
    dy = torch.randn_like(y)
    (dx,) = torch.autograd.grad(y, x, dy)
    (want,) = torch.autograd.grad(_plain(x, cos, sin), x, dy)
    close(dx, want, torch.float32, "dx")


def test_rotary_accepts_a_transposed_view(close, seeded):
    q = torch.randn(2, 5, 3, 8).transpose(1, 2)  # (B, nh, T, hs) view of (B, T, nh, hs)
    cos, sin = ops.rotary_tables(5, 8)
    close(ops.rotary(q, cos, sin), _plain(q, cos, sin), torch.float32, "y")


def test_rotary_tables_are_the_neox_angles():
    cos, sin = ops.rotary_tables(4, 6, base=100.0)
    angle = 3 * 100.0 ** (-2 / 6)  # position 3, frequency index 1
    assert cos.shape == (4, 3) and cos.dtype == torch.float32
    assert abs(cos[3, 1].item() - torch.tensor(angle).cos().item()) < 1e-6


def test_rotary_rejects_tables_of_the_wrong_shape():
    cos, sin = ops.rotary_tables(7, 8)
    with pytest.raises(ValueError, match=r"cos is \(7, 4\).*expected \(5, 4\)"):
        ops.rotary(torch.randn(1, 1, 5, 8), cos, sin)


def test_rotary_custom_op_passes_opcheck(seeded):
    cos, sin = ops.rotary_tables(5, 8)
    torch.library.opcheck(torch.ops.portkit.rotary.default, (torch.randn(2, 3, 5, 8, requires_grad=True), cos, sin))


def _check(dev, shape, dtype, close):
    from portkit.ops import rotary_triton as RT
    B, nh, T, hs = shape
    x = torch.randn(B, T, nh, hs, device=dev).to(dtype).transpose(1, 2)  # strided, as in attention
    cos, sin = ops.rotary_tables(T, hs, device=dev)
    dy = torch.randn(shape, device=dev).to(dtype)
    close(RT.rotary_fwd(x, cos, sin), rotary_fwd(x, cos, sin), dtype, "y")
    close(RT.rotary_bwd(dy, cos, sin), rotary_bwd(dy, cos, sin), dtype, "dx")


@pytest.mark.triton
@pytest.mark.parametrize("shape", SMALL)
@pytest.mark.parametrize("dtype", DTYPES)
def test_rotary_kernel_matches_reference(kdev, close, dtype, shape, seeded):
    _check(kdev, shape, dtype, close)


@pytest.mark.gpu
@pytest.mark.parametrize("shape", GRID)
@pytest.mark.parametrize("dtype", DTYPES)
def test_rotary_kernel_grid_gpu(gpu, close, dtype, shape, seeded):
    _check(gpu, shape, dtype, close)
