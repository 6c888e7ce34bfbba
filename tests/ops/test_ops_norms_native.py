"""aten's fused LayerNorm as a portkit implementation, against the torch reference."""
import pytest
import torch

from portkit.ops import norms, norms_native


@pytest.mark.parametrize("shape", [(37, 129), (3, 1000)])
@pytest.mark.parametrize("affine", [True, False])
def test_native_layer_norm_matches_reference(shape, affine):
    torch.manual_seed(0)
    x, dy = torch.randn(shape), torch.randn(shape)
    w = torch.randn(shape[1]) if affine else None
    b = torch.randn(shape[1]) if affine else None
    got, want = norms_native.layer_norm_fwd(x, w, b, 1e-5), norms.layer_norm_fwd(x, w, b, 1e-5)
    for g, r in zip(got, want):
        assert g.shape == r.shape and g.dtype == r.dtype
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5)
    gb = norms_native.layer_norm_bwd(dy, x, w, b, want[1], want[2])
    rb = norms.layer_norm_bwd(dy, x, w, b, want[1], want[2])
    for g, r in zip(gb, rb):
        assert g.shape == r.shape
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-4)


def test_aten_norms_register_for_cuda_backends_only_with_their_measured_rank():
    from portkit.ops import builtin as plugin
    impls = {i.op: i for i in plugin.portkit_register_ops() if i.name == "aten"}
    cuda, cpu = type("B", (), {"device_type": "cuda"})(), type("B", (), {"device_type": "cpu"})()
    assert set(impls) == {"layer_norm_fwd", "layer_norm_bwd", "rms_norm_fwd", "rms_norm_bwd"}
    for impl in impls.values():
        assert impl.predicate(cuda) and not impl.predicate(cpu)
        assert impl.priority == plugin.NATIVE[impl.op]
