"""The `unchanged` conformance group on the cpu backend: the packaged CUDA-style scripts run
through `portkit exec` / `portkit launch` with the losses of their hand edits for the CPU."""
from portkit.backends.cpu import CPUBackend
from portkit.conformance import unchanged
from portkit.conformance.common import Context


def test_unchanged_group_passes_on_cpu_and_a_wrong_reference_fails(tmp_path):
    checks = unchanged.unchanged(Context(backend=CPUBackend(), workdir=tmp_path, timeout=300))
    assert [(c.name, c.ok, c.reason) for c in checks] == [
        ("train.py (nanoGPT) through portkit exec", True, ""),
        ("apex_train.py (apex fused modules) through portkit exec", True, ""),
        ("train.py DDP 'nccl' through portkit launch (2 processes)", True, "")]
    assert unchanged.same_losses([4.0, 3.9], [4.0, 3.8], 1e-4).startswith("step 1: loss 3.9 through portkit vs 3.8")
