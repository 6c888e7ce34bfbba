"""RMSNorm and LayerNorm: reference vs torch, custom-op checks, Triton kernels vs reference."""
import importlib

import pytest
import torch
import torch.nn.functional as F

import portkit.ops as ops
from portkit.ops import norms

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SMALL = [(37, 129), (3, 1000), (4, 64)]
GRID = [(1823, 781), (16384, 2048), (4096, 8192), (7, 65536)]


def _data(shape, dtype, device, affine):
    n, h = shape
    x = torch.randn(n, h, device=device).to(dtype) * 2 + 0.5
    w = (torch.rand(h, device=device) + 0.5).to(dtype) if affine else None
    b = torch.randn(h, device=device).to(dtype) if affine else None
    dy = torch.randn(n, h, device=device).to(dtype)
    return x, w, b, dy


def _grads(fn, inputs, dy):
    leaves = [t.detach().requires_grad_() if t is not None else None for t in inputs]
    y = fn(*leaves)
    wanted = [t for t in leaves if t is not None]
    return (y, *torch.autograd.grad(y, wanted, dy))


# -- reference and custom op (CPU) ---------------------------------------------------------------
@pytest.mark.parametrize("shape", [(37, 129), (2, 3, 64)])
def test_rms_norm_matches_torch_forward_and_backward(shape, close, seeded):
    x, w, dy = torch.randn(shape), torch.rand(shape[-1]) + 0.5, torch.randn(shape)
    ours = _grads(lambda a, b: ops.rms_norm(a, b, 1e-6), (x, w), dy)
    theirs = _grads(lambda a, b: F.rms_norm(a, (shape[-1],), b, 1e-6), (x, w), dy)
    for name, a, b in zip(("y", "dx", "dw"), ours, theirs):
        close(a, b, torch.float32, name)


@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_matches_torch_forward_and_backward(affine, close, seeded):
    x, w, b, dy = _data((37, 129), torch.float32, "cpu", affine)
    ours = _grads(lambda *a: ops.layer_norm(*a, eps=1e-5), (x, w, b), dy)
    theirs = _grads(lambda a, ww, bb: F.layer_norm(a, (129,), ww, bb, 1e-5), (x, w, b), dy)
    for name, a, c in zip(("y", "dx", "dw", "db"), ours, theirs):
        close(a, c, torch.float32, name)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_norms_compute_in_fp32_and_round_once(dtype, close, seeded):
    x, w, b, _ = _data((5, 96), dtype, "cpu", True)
    close(ops.rms_norm(x, w), F.rms_norm(x.float(), (96,), w.float(), 1e-6).to(dtype), dtype, "rms")
    close(ops.layer_norm(x, w, b), F.layer_norm(x.float(), (96,), w.float(), b.float()).to(dtype), dtype, "ln")


def test_norm_custom_ops_pass_opcheck(seeded):
    x = torch.randn(3, 4, 16, requires_grad=True)
    w, b = torch.randn(16, requires_grad=True), torch.randn(16, requires_grad=True)
    torch.library.opcheck(torch.ops.portkit.rms_norm.default, (x, w, 1e-6, None))
    torch.library.opcheck(torch.ops.portkit.rms_norm.default, (x, None, 1e-6, None))
    torch.library.opcheck(torch.ops.portkit.layer_norm.default, (x, w, b, 1e-5, None))
    y, rstd, _ = torch.ops.portkit.rms_norm(x.detach(), w.detach(), 1e-6, None)
    dy = torch.randn_like(y)
    torch.library.opcheck(torch.ops.portkit.rms_norm_backward.default, (dy, x.detach(), w.detach(), rstd, None))
    torch.library.opcheck(torch.ops.portkit.rms_norm_backward.default, (dy, x.detach(), w.detach(), rstd, dy))


def test_norm_weight_of_wrong_size_is_an_error_that_names_both():
    with pytest.raises(ValueError, match=r"weight has shape \(7,\), expected \(16,\)"):
        ops.rms_norm(torch.randn(2, 16), torch.randn(7))


def test_rms_norm_compiles_with_torch_compile(close, seeded):
    x, w = torch.randn(4, 32, requires_grad=True), torch.rand(32) + 0.5
    compiled = torch.compile(lambda a, b: ops.rms_norm(a, b) * 2, backend="aot_eager", fullgraph=True)
    y = compiled(x, w)
    close(y, ops.rms_norm(x, w) * 2, torch.float32, "compiled")
    y.sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape


# -- Triton kernels vs reference -----------------------------------------------------------------
def _check_rms(dev, shape, dtype, affine, close, module="norms_triton"):
    nt = importlib.import_module(f"portkit.ops.{module}")
    x, w, _, dy = _data(shape, dtype, dev, affine)
    y, rstd = nt.rms_norm_fwd(x, w, 1e-6)
    ry, rrstd = norms.rms_norm_fwd(x, w, 1e-6)
    close(y, ry, dtype, "y")
    close(rstd, rrstd, torch.float32, "rstd")
    dx, dw = nt.rms_norm_bwd(dy, x, w, rrstd)
    rdx, rdw = norms.rms_norm_bwd(dy, x, w, rrstd)
    close(dx, rdx, dtype, "dx")
    close(dw, rdw, dtype, "dw", scale=4)


def _check_ln(dev, shape, dtype, affine, close, module="norms_triton"):
    nt = importlib.import_module(f"portkit.ops.{module}")
    x, w, b, dy = _data(shape, dtype, dev, affine)
    y, mean, rstd = nt.layer_norm_fwd(x, w, b, 1e-5)
    ry, rmean, rrstd = norms.layer_norm_fwd(x, w, b, 1e-5)
    close(y, ry, dtype, "y")
    close(mean, rmean, torch.float32, "mean", scale=10)
    close(rstd, rrstd, torch.float32, "rstd")
    grads = nt.layer_norm_bwd(dy, x, w, b, rmean, rrstd)
    for name, a, c in zip(("dx", "dw", "db"), grads, norms.layer_norm_bwd(dy, x, w, b, rmean, rrstd)):
        close(a, c, dtype, name, scale=4)


@pytest.mark.triton
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape", SMALL)
@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_kernel_matches_reference(kdev, close, dtype, shape, affine, seeded):
    _check_rms(kdev, shape, dtype, affine, close)


@pytest.mark.triton
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape", SMALL)
@pytest.mark.parametrize("dtype", DTYPES)
def test_layer_norm_kernel_matches_reference(kdev, close, dtype, shape, affine, seeded):
    _check_ln(kdev, shape, dtype, affine, close)


@pytest.mark.gpu
@pytest.mark.parametrize("module", ["norms_triton", "norms_native"])
@pytest.mark.parametrize("shape", GRID)
@pytest.mark.parametrize("dtype", DTYPES)
def test_norm_kernels_grid_gpu(gpu, close, dtype, shape, module, seeded):
    for affine in (True, False):
        _check_rms(gpu, shape, dtype, affine, close, module)
        _check_ln(gpu, shape, dtype, affine, close, module)


@pytest.mark.gpu
def test_norms_dispatch_to_triton_and_match_reference_mode_gpu(gpu, close, seeded):
    from portkit.ops import registry
    assert registry.choose("rms_norm_fwd").name == "triton", "the GPU backend must report capabilities().triton"
    x, w, b, dy = _data((1823, 781), torch.bfloat16, gpu, True)
    fused = _grads(lambda *a: ops.layer_norm(*a), (x, w, b), dy)
    registry.set_mode("reference")
    try:
        ref = _grads(lambda *a: ops.layer_norm(*a), (x, w, b), dy)
    finally:
        registry.set_mode(None)
    for name, a, c in zip(("y", "dx", "dw", "db"), fused, ref):
        close(a, c, torch.bfloat16, name, scale=4)


# -- the residual add fused into the norm ---------------------------------------------------------
@pytest.mark.parametrize("kind", ["rms", "ln"])
@pytest.mark.parametrize("s_used", [True, False])
def test_add_norm_equals_the_add_then_the_norm(kind, s_used, close, seeded):
    """Forward and every gradient of (s, norm(s)), s = x + r, against the two ops unfused;
    with s_used=False only the norm's output reaches the loss (the last block before ln_f)."""
    x, w, b, dy = _data((10, 96), torch.float32, "cpu", True)
    r, ds = torch.randn_like(x), torch.randn_like(x)
    norm = (lambda s, w, b: ops.rms_norm(s, w)) if kind == "rms" else (lambda s, w, b: ops.layer_norm(s, w, b))
    fused = (lambda x, r, w, b: ops.add_rms_norm(x, r, w)) if kind == "rms" else ops.add_layer_norm

    def unfused(x, r, w, b):
        s = x + r
        return s, norm(s, w, b)

    results = []
    for fn in (fused, unfused):
        leaves = [t.detach().requires_grad_() for t in (x, r, w, b)]
        s, y = fn(*leaves)
        loss = (y * dy).sum() + ((s * ds).sum() if s_used else 0)
        grads = torch.autograd.grad(loss, leaves[:3] if kind == "rms" else leaves)
        results.append((s, y, *grads))
    for name, a, c in zip(("s", "y", "dx", "dr", "dw", "db"), *results):
        close(a, c, torch.float32, name)


def test_add_norm_custom_ops_pass_opcheck(seeded):
    x, r = torch.randn(3, 4, 16, requires_grad=True), torch.randn(3, 4, 16, requires_grad=True)
    w, b = torch.randn(16, requires_grad=True), torch.randn(16, requires_grad=True)
    torch.library.opcheck(torch.ops.portkit.rms_norm.default, (x, w, 1e-6, r))
    torch.library.opcheck(torch.ops.portkit.layer_norm.default, (x, w, b, 1e-5, r))


def test_add_norm_without_residual_is_the_plain_norm(seeded):
    x, w, b, _ = _data((10, 96), torch.float32, "cpu", True)
    s, y = ops.add_layer_norm(x, None, w, b)
    assert s is x and torch.equal(y, ops.layer_norm(x, w, b))
    s, y = ops.add_rms_norm(x, None, w)
    assert s is x and torch.equal(y, ops.rms_norm(x, w))


def test_add_norm_residual_of_another_shape_is_an_error():
    with pytest.raises(ValueError, match=r"add_layer_norm: residual is torch.float32 \(2, 8\), expected"):
        ops.add_layer_norm(torch.randn(2, 16), torch.randn(2, 8))


def _check_add(dev, shape, dtype, affine, close, kind):
    """The fused kernels (add_*_norm_fwd, *_norm_bwd_add) against the references: s against
    x + r, the norm's outputs against the reference norm of the s the kernel stored."""
    from portkit.ops import norms_triton as nt
    x, w, b, dy = _data(shape, dtype, dev, affine)
    r, dres = torch.randn_like(x), torch.randn_like(x)
    params = (w,) if kind == "rms" else (w, b)
    eps = 1e-6 if kind == "rms" else 1e-5
    name = "rms_norm" if kind == "rms" else "layer_norm"
    s, *got = getattr(nt, f"add_{name}_fwd")(x, r, *params, eps)
    close(s, x + r, dtype, "s")
    if x.is_cuda:  # round to nearest even, as torch's add (Triton's interpreter truncates bf16)
        assert torch.equal(s, x + r), "s = x + r must be rounded as the unfused add rounds it"
    ref = getattr(norms, f"{name}_fwd")(s, *params, eps)
    for what, a, c in zip(("y", "stat", "stat"), got, ref):
        close(a, c, dtype if what == "y" else torch.float32, what, scale=10)
    args = (dy, s, *params, *ref[1:], dres)
    for what, a, c in zip(("dx", "dw", "db"), getattr(nt, f"{name}_bwd_add")(*args),
                          getattr(norms, f"{name}_bwd_add")(*args)):
        close(a, c, dtype, what, scale=4)


@pytest.mark.triton
@pytest.mark.parametrize("kind", ["rms", "ln"])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_add_norm_kernels_match_reference(kdev, close, dtype, affine, kind, seeded):
    _check_add(kdev, (37, 129), dtype, affine, close, kind)


@pytest.mark.gpu
@pytest.mark.parametrize("shape", GRID)
def test_add_norm_kernels_grid_gpu(gpu, close, shape, seeded):
    for kind in ("rms", "ln"):
        _check_add(gpu, shape, torch.bfloat16, True, close, kind)
