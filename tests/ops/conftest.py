"""Fixtures of the fused-op tests.

Kernel tests (marked `triton`) call the Triton launchers directly on the `kdev` device:
the GPU when one is present, CPU tensors when this process runs under the Triton
interpreter (TRITON_INTERPRET=1, set by test_ops_interpreter.py before triton is
imported), else they skip. GPU-only tests are marked `gpu` and take the `gpu` fixture.
"""
import os

import pytest
import torch

from portkit.ops import registry
from portkit.ops.registry import OpImpl

# max |a - b| / max |b| allowed when comparing an implementation with the reference
TOL = {torch.float32: 1e-5, torch.float64: 1e-6, torch.float16: 4e-3, torch.bfloat16: 2e-2}


def pytest_configure(config):
    config.addinivalue_line("markers", "triton: calls the Triton kernels (interpreter on CPU, or a GPU)")


def _accelerator() -> torch.device | None:
    acc = getattr(torch, "accelerator", None)
    if acc is None or not acc.is_available():
        return None
    return torch.device(acc.current_accelerator().type, 0)


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "") == "1"


@pytest.fixture
def kdev() -> torch.device:
    if interpreting():
        return torch.device("cpu")
    dev = _accelerator()
    if dev is None:
        pytest.skip("Triton kernels need a GPU or TRITON_INTERPRET=1 (see test_ops_interpreter.py)")
    return dev


@pytest.fixture
def gpu() -> torch.device:
    dev = _accelerator()
    if dev is None or interpreting():
        pytest.skip("needs a GPU")
    return dev


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


@pytest.fixture
def close():
    """close(actual, expected, dtype, what): normwise comparison with a dtype tolerance."""
    def check(actual, expected, dtype, what="", scale=1.0):
        assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
        assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
        if actual.numel() == 0:
            return
        assert torch.isfinite(actual).all(), f"{what}: non-finite values"
        err, tol = relative_error(actual, expected), TOL[dtype] * scale
        assert err <= tol, f"{what}: relative error {err:.2e} > {tol:.1e} ({dtype})"
    return check


@pytest.fixture
def seeded():
    torch.manual_seed(0)
    return torch.Generator().manual_seed(0)


@pytest.fixture
def impls(monkeypatch):
    """A private copy of the registered implementations, restored after the test, with the
    cpu backend active (these tests use CPU tensors, also on a GPU machine). Eager autograd
    calls of any size take the implementations registered here, not torch's own ops
    (portkit.ops._op.eager_native; test_ops_eager_native.py sets its threshold back)."""
    from portkit import runtime
    from portkit.ops import _op
    monkeypatch.setattr(_op, "EAGER_FUSED_BYTES", 0)
    monkeypatch.setattr(runtime, "_active", runtime.backends()["cpu"])
    registry.choose("rms_norm_fwd")  # plugins loaded before the copy
    monkeypatch.setattr(registry, "_impls", {k: list(v) for k, v in registry._impls.items()})
    monkeypatch.setattr(registry, "_cache", {})
    monkeypatch.setattr(registry, "_mode", None)
    monkeypatch.delenv(registry.MODE_ENV, raising=False)
    yield registry
    registry._cache.clear()


@pytest.fixture
def serve_counting(impls):
    """serve_counting(op -> reference) registers, for the CPU, a wrapper of each reference that
    records its op's name, and returns the list of calls. The predicate runs a torch op and
    defines a class, as loading a real implementation's library does: torch.compile can trace
    neither, so an op must choose its implementation outside the trace."""
    def predicate(backend):
        class Loaded:  # noqa: F841  (torch.compile cannot trace a class statement)
            pass
        return bool(torch.ones(1).sum() > 0) and backend.device_type == "cpu"

    def serve(references):
        calls = []
        for op, ref in references.items():
            impls.register(OpImpl(op, lambda *a, op=op, ref=ref: calls.append(op) or ref(*a), predicate, 99, "test"))
        return calls
    return serve


@pytest.fixture
def gpt_one_graph():
    """Compiles a small bf16 GPT's training forward and asserts torch.compile took it whole."""
    def check():
        from portkit.models.gpt import GPT, GPTConfig
        cfg = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=64, norm="layernorm",
                        pos="learned", mlp="gelu", bias=True)
        idx = torch.randint(0, 64, (2, 16))
        explained = torch._dynamo.explain(GPT(cfg).to(torch.bfloat16))(idx, idx)
        assert explained.graph_break_count == 0, [b.reason for b in explained.break_reasons]
    return check
