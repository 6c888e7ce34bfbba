"""The Megatron-core patches: version gate, skipped on CUDA, module-scoped and reversible."""
import types

import pytest
import torch

from portkit import patching, runtime
from portkit.hostdevice import host_device
from portkit.patches import megatron, torch_cuda


@pytest.fixture
def megatron_patches():
    """The registered Megatron patches, put back to 'registered' afterwards."""
    chosen = [p for p in patching.all_patches() if p.framework == megatron.FRAMEWORK]
    assert len(chosen) == len(megatron.REDIRECTED)
    yield chosen
    patching.disable(megatron.FRAMEWORK)
    for p in chosen:
        p.state, p.reason = "registered", ""


class FakeBackend:
    def __init__(self, device_type):
        self.name, self.device_type = f"fake-{device_type}", device_type

    @property
    def module(self):
        return host_device(self) if self.device_type == "cpu" else getattr(torch, self.device_type)


def test_megatron_patch_refuses_outside_tested_range(megatron_patches, monkeypatch):
    monkeypatch.setattr(patching, "framework_version", lambda dist: "0.15.2")
    with pytest.raises(patching.PatchError) as e:
        megatron.enable()
    assert "megatron-core 0.15.2" in str(e.value) and megatron.VERSIONS in str(e.value)
    assert megatron_patches[0].state == "refused" and "0.15.2" in megatron_patches[0].reason


def test_megatron_patches_skipped_on_cuda_backend_simulated(megatron_patches, monkeypatch):
    monkeypatch.setattr(runtime, "_active", FakeBackend("cuda"))
    megatron.enable()
    assert {p.state for p in megatron_patches} == {"skipped"}
    assert "runs natively" in megatron_patches[0].reason


def test_redirect_is_module_scoped_and_reversible(monkeypatch):
    monkeypatch.setattr(runtime, "_active", FakeBackend("cpu"))
    mod = types.ModuleType("fake_megatron_module")
    mod.torch = torch
    megatron._redirect(mod)
    host = runtime.active().module
    assert mod.torch.cuda is host and torch.cuda is not host
    buf = mod.torch.empty(3, device=mod.torch.cuda.current_device())   # utils.GlobalMemoryBuffer
    lit = mod.torch.zeros(2, device="cuda")                              # device='cuda' literals
    dev = mod.torch.device("cuda", mod.torch.cuda.current_device())
    assert buf.device.type == lit.device.type == dev.type == "cpu"
    assert isinstance(dev, mod.torch.device) and mod.torch.Tensor is torch.Tensor
    megatron._unredirect(mod)
    assert mod.torch is torch


def test_rng_state_helpers_use_the_backend_generator(monkeypatch):
    monkeypatch.setattr(runtime, "_active", FakeBackend("cpu"))
    state = megatron._get_rng_state()
    first = torch.rand(3)
    megatron._set_rng_state(state)
    assert torch.equal(torch.rand(3), first)
    with pytest.raises(NotImplementedError, match="use_cudagraphable_rng"):
        megatron._get_rng_state(graph_safe=True)


def test_redirect_on_npu_uses_torch_npu_simulated(monkeypatch):
    fake_npu = types.SimpleNamespace(current_device=lambda: 0, manual_seed=lambda seed: None)
    monkeypatch.setattr(torch, "npu", fake_npu, raising=False)
    monkeypatch.setattr(runtime, "_active", FakeBackend("npu"))
    mod = types.ModuleType("fake_megatron_module")
    mod.torch = torch
    megatron._redirect(mod)
    try:
        assert mod.torch.cuda is fake_npu and mod.torch.cuda.current_device() == 0
        assert megatron._needed() is None
    finally:
        megatron._unredirect(mod)
