"""The apex shim: each served module against its torch reference, the refusals, install/undo."""
import importlib
import inspect
import sys

import pytest
import torch
import torch.nn.functional as F

from portkit import patching
from portkit.patches import apex as shim


@pytest.fixture
def apex():
    (patch,) = shim.install()
    assert patch.state == "applied"
    yield importlib.import_module("apex")
    shim.uninstall()
    patch.state, patch.reason = "registered", ""


def grads(fn, *tensors):
    tensors = [t.detach().clone().requires_grad_(True) for t in tensors]
    out = fn(*tensors)
    out.backward(torch.linspace(-1, 1, out.numel()).reshape(out.shape).to(out.dtype))
    return out.detach(), [t.grad for t in tensors]


def close(a, b, tol=1e-5):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def test_fused_layer_norms_match_torch(apex):
    from apex.normalization import FusedLayerNorm, FusedRMSNorm, MixedFusedLayerNorm
    x, w, b = torch.randn(3, 5, 2, 7), torch.randn(2, 7), torch.randn(2, 7)  # normalized over the last two dims
    ln = FusedLayerNorm((2, 7))
    ln.weight.data.copy_(w), ln.bias.data.copy_(b)
    y, (gx,) = grads(ln, x)
    y_ref, (gx_ref, _, _) = grads(lambda x, w, b: F.layer_norm(x, (2, 7), w, b, 1e-5), x, w, b)
    close(y, y_ref), close(gx, gx_ref)
    rms = FusedRMSNorm(7, eps=1e-6)
    rms.weight.data.copy_(w[0])
    y, (gx,) = grads(rms, x[..., 0, :])
    y_ref, (gx_ref,) = grads(lambda x: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w[0], x[..., 0, :])
    close(y, y_ref), close(gx, gx_ref)
    mixed = MixedFusedLayerNorm(7)  # fp32 weights on bf16 activations -> fp32 output
    out = mixed(x[..., 0, :].bfloat16())
    assert out.dtype == torch.float32
    close(out, F.layer_norm(x[..., 0, :].bfloat16().float(), (7,)))


def test_layer_norm_function_has_apex_signature(apex):
    from apex.normalization.fused_layer_norm import FusedLayerNormAffineFunction
    from apex.contrib.layer_norm.layer_norm import FastLayerNorm, FastLayerNormFN
    assert "memory_efficient" in inspect.getfullargspec(FusedLayerNormAffineFunction.forward).args
    x, w, b = torch.randn(4, 16), torch.randn(16), torch.randn(16)
    y, gs = grads(lambda x, w, b: FusedLayerNormAffineFunction.apply(x, w, b, torch.Size([16]), 1e-5, False), x, w, b)
    y_ref, gs_ref = grads(lambda x, w, b: F.layer_norm(x, (16,), w, b, 1e-5), x, w, b)
    close(y, y_ref)
    for g, r in zip(gs, gs_ref):
        close(g, r)
    close(FastLayerNormFN.apply(x, w, b, 1e-5), y_ref)
    assert FastLayerNorm(16)(x.bfloat16()).dtype == torch.float32  # output in the weights' dtype


def test_layer_norm_kernels_match_autograd(apex):
    import fused_layer_norm_cuda
    import fused_mix_prec_layer_norm_cuda
    x, w, b = torch.randn(6, 10), torch.randn(10), torch.randn(10)
    y, mean, invvar = fused_layer_norm_cuda.forward_affine(x, [10], w, b, 1e-5)
    close(mean, x.mean(-1)), close(invvar, torch.rsqrt(x.var(-1, unbiased=False) + 1e-5))
    dy = torch.randn(6, 10)
    dx, dw, db = fused_layer_norm_cuda.backward_affine(dy, mean, invvar, x, [10], w, b, 1e-5, False)
    xs, ws, bs = (t.clone().requires_grad_(True) for t in (x, w, b))
    y_ref = F.layer_norm(xs, (10,), ws, bs, 1e-5)
    y_ref.backward(dy)
    close(y, y_ref), close(dx, xs.grad), close(dw, ws.grad), close(db, bs.grad)
    out, _, _ = fused_mix_prec_layer_norm_cuda.forward_affine(x.bfloat16(), [10], w, b, 1e-5)
    assert out.dtype == torch.float32
    with pytest.raises(NotImplementedError, match="memory_efficient"):
        fused_layer_norm_cuda.backward_affine(dy, mean, invvar, y, [10], w, b, 1e-5, True)


def test_softmax_kernels_match_megatron_torch_path(apex):
    import scaled_masked_softmax_cuda
    import scaled_upper_triang_masked_softmax_cuda
    x = torch.randn(2, 3, 5, 7)
    mask = torch.rand(2, 1, 5, 7) > 0.6
    mask[0, 0, 1] = True  # a fully masked row: uniform, as the CUDA kernel's -10000 fill gives
    y = scaled_masked_softmax_cuda.forward(x, mask, 0.5)
    y_ref = torch.softmax((x * 0.5).masked_fill(mask, -10000.0), dim=-1)  # Megatron's torch path
    close(y, y_ref)
    dy = torch.randn_like(y)
    dx = scaled_masked_softmax_cuda.backward(dy, y, 0.5)
    close(dx, 0.5 * y * (dy - (dy * y).sum(-1, keepdim=True)))
    xs = torch.randn(6, 5, 5)
    causal = torch.triu(torch.ones(5, 5, dtype=torch.bool), 1)
    close(scaled_upper_triang_masked_softmax_cuda.forward(xs, 2.0), torch.softmax((xs * 2.0).masked_fill(causal, float("-inf")), -1))
    assert scaled_masked_softmax_cuda.get_batch_per_block(128, 128, 4, 8) == 8  # as apex: 4 warps x 2


def test_fused_adam_matches_torch_adamw_and_adam(apex):
    from apex.optimizers import FusedAdam, FusedSGD
    for adam_w_mode, ref_cls in ((True, torch.optim.AdamW), (False, torch.optim.Adam)):
        torch.manual_seed(1)
        p1 = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(7))]
        p2 = [torch.nn.Parameter(p.detach().clone()) for p in p1]
        opt1 = FusedAdam(p1, lr=1e-2, weight_decay=0.05, adam_w_mode=adam_w_mode)
        opt2 = ref_cls(p2, lr=1e-2, weight_decay=0.05)
        for step in range(4):
            for a, b in zip(p1, p2):
                a.grad = torch.randn_like(a)
                b.grad = a.grad.clone()
            opt1.step(), opt2.step()
        for a, b in zip(p1, p2):
            close(a, b, 1e-6)
    p1 = torch.nn.Parameter(torch.randn(9))
    p2 = torch.nn.Parameter(p1.detach().clone())
    sgd1, sgd2 = FusedSGD([p1], lr=0.1, momentum=0.9), torch.optim.SGD([p2], lr=0.1, momentum=0.9)
    for _ in range(3):
        p1.grad = torch.randn(9)
        p2.grad = p1.grad.clone()
        sgd1.step(), sgd2.step()
    close(p1, p2)
    with pytest.raises(NotImplementedError, match="master_weights"):
        FusedAdam([torch.nn.Parameter(torch.randn(2))], master_weights=True)


def test_amp_c_through_multi_tensor_applier(apex):
    import amp_C
    from apex.multi_tensor_apply import multi_tensor_applier
    ts = [torch.randn(4, 3), torch.randn(10)]
    flag = torch.zeros(1, dtype=torch.int)
    total, per = multi_tensor_applier(amp_C.multi_tensor_l2norm, flag, [ts], True)
    close(total, torch.cat([t.flatten() for t in ts]).norm().reshape(1)), close(per, torch.stack([t.norm() for t in ts]))
    outs = [torch.empty_like(t) for t in ts]
    multi_tensor_applier(amp_C.multi_tensor_scale, flag, [ts, outs], 0.5)
    close(outs[1], ts[1] * 0.5)
    assert flag.item() == 0
    ts[0][0, 0] = float("inf")
    multi_tensor_applier(amp_C.multi_tensor_scale, flag, [ts, outs], 0.5)
    assert flag.item() == 1  # overflow reported, as apex does


def test_weight_gradient_accumulation(apex):
    import fused_weight_gradient_mlp_cuda
    x, dy, main = torch.randn(2, 6, 4), torch.randn(2, 6, 3), torch.randn(3, 4)
    expected = main + dy.reshape(-1, 3).t() @ x.reshape(-1, 4)
    fused_weight_gradient_mlp_cuda.wgrad_gemm_accum_fp32(x, dy, main)
    close(main, expected)


def test_unserved_names_say_what_to_use(apex):
    with pytest.raises(ImportError, match="FusedLAMB is not served.*FusedAdamW"):
        from apex.optimizers import FusedLAMB  # noqa: F401
    with pytest.raises(ModuleNotFoundError, match="apex.amp is not served.*torch.amp"):
        import apex.amp  # noqa: F401
    assert hasattr(apex, "optimizers") and hasattr(apex.optimizers, "FusedAdam")  # DeepSpeed's probe
    assert not hasattr(apex, "amp")


def test_uninstall_removes_the_shim(apex):
    shim.uninstall()
    assert not shim.installed() and "apex" not in sys.modules
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("apex")


def test_shim_skipped_where_real_apex_is_installed_simulated(tmp_path, monkeypatch):
    (tmp_path / "apex" / "normalization").mkdir(parents=True)
    (tmp_path / "apex" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    (patch,) = shim.install()
    try:
        assert patch.state == "skipped" and str(tmp_path / "apex") in patch.reason and not shim.installed()
    finally:
        patch.state, patch.reason = "registered", ""


def test_shim_refuses_outside_the_tested_torch_range(monkeypatch):
    monkeypatch.setattr(patching, "framework_version", lambda dist: "2.3.1" if dist == "torch" else None)
    (patch,) = [p for p in patching.all_patches() if p.name == "apex.shim"]
    try:
        with pytest.raises(patching.PatchError, match=r"torch 2.3.1 is outside the tested range >=2.4"):
            shim.install()
        assert patch.state == "refused" and not shim.installed()
    finally:
        patch.state, patch.reason = "registered", ""
