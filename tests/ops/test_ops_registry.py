"""Op registry and dispatch: priorities, predicates, reference mode, the built-in Triton plugin."""
import subprocess
import sys

import pytest
import torch

import portkit
import portkit.ops as ops
from portkit.ops import registry
from portkit.ops.builtin import LazyKernel


def _doubling(x, weight, eps):
    return x * 2, x.new_ones(x.shape[0])


def test_a_plugin_implementation_wins_by_priority_when_its_predicate_holds(impls):
    impls.register(ops.OpImpl("rms_norm_fwd", _doubling, lambda b: b.name == "cpu", 100, "doubling"))
    impls.register(ops.OpImpl("rms_norm_fwd", _doubling, lambda b: True, 50, "lower"))
    assert impls.choose("rms_norm_fwd").name == "doubling"
    x = torch.randn(3, 4)
    assert torch.equal(ops.rms_norm(x), x * 2)


def test_an_implementation_whose_predicate_fails_is_passed_over(impls):
    impls.register(ops.OpImpl("rms_norm_fwd", _doubling, lambda b: False, 100, "elsewhere"))
    assert impls.choose("rms_norm_fwd") is None
    x = torch.randn(3, 4)
    assert not torch.equal(ops.rms_norm(x), x * 2)


def test_reference_mode_forces_the_reference(impls, monkeypatch):
    impls.register(ops.OpImpl("rms_norm_fwd", _doubling, lambda b: True, 100, "doubling"))
    monkeypatch.setenv(registry.MODE_ENV, "reference")
    assert impls.choose("rms_norm_fwd") is None
    x = torch.randn(3, 4)
    assert torch.allclose(ops.rms_norm(x), x * torch.rsqrt(x.square().mean(-1, keepdim=True) + 1e-6))
    monkeypatch.delenv(registry.MODE_ENV)
    impls.set_mode("reference")
    assert impls.choose("rms_norm_fwd") is None


def test_a_named_mode_prefers_that_implementation_where_it_runs(impls):
    impls.register(ops.OpImpl("rms_norm_fwd", _doubling, lambda b: True, 100, "first"))
    impls.register(ops.OpImpl("rms_norm_fwd", _doubling, lambda b: True, 50, "second"))
    impls.register(ops.OpImpl("rms_norm_bwd", _doubling, lambda b: False, 50, "second"))
    impls.set_mode("second")
    assert impls.choose("rms_norm_fwd").name == "second"
    assert impls.choose("rms_norm_bwd") is None  # "second" does not run here: the usual choice
    impls.set_mode(None)
    assert impls.choose("rms_norm_fwd").name == "first"


def test_an_unknown_op_or_mode_is_an_error_that_lists_the_known_ones(impls):
    with pytest.raises(KeyError, match="unknown op 'rms_nrom'.*rms_norm_fwd"):
        impls.choose("rms_nrom")
    with pytest.raises(ValueError, match="unknown op 'nope'"):
        impls.register(ops.OpImpl("nope", _doubling, lambda b: True))
    with pytest.raises(ValueError, match="'fast' is not one of auto, reference"):
        impls.set_mode("fast")


def test_tensors_off_the_active_device_run_the_reference_simulated(impls, monkeypatch):
    """A GPU backend is active (simulated) but the tensors are on the CPU: the reference runs."""
    class FakeGPU(portkit.Backend):
        name, device_type = "fakegpu", "cuda"

        def probe(self):
            return None
    monkeypatch.setattr(portkit.runtime, "_active", FakeGPU())
    impls.register(ops.OpImpl("rms_norm_fwd", _doubling, lambda b: b.name == "fakegpu", 100, "gpu-only"))
    assert impls.choose("rms_norm_fwd").name == "gpu-only"
    x = torch.randn(3, 4)
    assert not torch.equal(ops.rms_norm(x), x * 2)


def test_the_builtin_triton_plugin_registers_every_op_for_triton_backends(impls):
    rows = {r["op"]: r for r in impls.table()}
    fused = ["rms_norm_fwd", "rms_norm_bwd", "layer_norm_fwd", "layer_norm_bwd", "bias_gelu_fwd",
             "bias_gelu_bwd", "swiglu_fwd", "swiglu_bwd", "rotary_fwd", "rotary_bwd", "softmax_fwd",
             "softmax_bwd", "cross_entropy_chunk", "linear_cross_entropy_fwd", "adamw_step"]
    for op in fused:
        expected = ["triton", "aten"] if "norm" in op else ["triton"]
        builtin = [n for n in rows[op]["implementations"] if not n.startswith("testvendor.")]  # the test plugin's own
        assert builtin == expected + ["reference"], op
        assert rows[op]["selected"] == "reference"  # the CPU backend has no Triton
    for op in ("gelu_mlp_fwd", "gelu_mlp_bwd"):  # cuBLASLt's epilogues, offered by CUDA builds only
        assert [n for n in rows[op]["implementations"] if not n.startswith("testvendor.")] == ["cublaslt", "reference"]
        assert rows[op]["selected"] == "linears+bias_gelu"  # what ops.gelu_mlp calls unserved
    for op in ("causal_attention_fwd", "causal_attention_bwd"):  # unserved, ops.causal_attention is SDPA
        assert rows[op]["selected"] == "torch sdpa"
    impl = impls._impls["rms_norm_fwd"][0]
    assert isinstance(impl.fn, LazyKernel) and impl.priority == 10
    assert impl.predicate(portkit.backend()) is False


def test_importing_ops_never_imports_triton_and_cpu_dispatch_loads_no_kernel_module():
    # (torch's own custom_op machinery may import triton on a first call; portkit must not)
    code = ("import sys, torch, portkit.ops as ops\n"
            "from portkit.ops import registry\n"
            "registry.table()\n"
            "assert 'triton' not in sys.modules, 'import portkit.ops imported triton'\n"
            "ops.rms_norm(torch.randn(2, 8)); ops.linear_cross_entropy(torch.randn(4, 8), torch.randn(6, 8), "
            "torch.zeros(4, dtype=torch.long))\n"
            "loaded = [m for m in sys.modules if m.startswith('portkit.ops.') and m.endswith('_triton')]\n"
            "assert not loaded, loaded\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
