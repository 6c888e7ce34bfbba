"""Colossal-AI adapter: accelerator delegation, kernel-loader fallback, version gate, undo,
Booster runs (TorchDDP and LowLevelZero) in 2 processes against a single-process reference."""
import json
import os
import sys

import pytest
import torch

from portkit import patching, runtime
from portkit.backend import Backend
from portkit.patches import _colo_accelerator
from portkit.patches import colossalai as colo_patch

colossalai = pytest.importorskip("colossalai")

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import ds_common as common  # noqa: E402


@pytest.fixture
def colo(fresh_runtime, monkeypatch):
    monkeypatch.setenv("PORTKIT_BACKEND", "cpu")
    yield colo_patch
    patching.disable("colossalai")


def test_accelerator_and_kernels_answer_from_portkit(colo):
    colo.enable()
    from colossalai.accelerator import get_accelerator
    from colossalai.kernel.kernel_loader import CPUAdamLoader, FusedOptimizerLoader, LayerNormLoader
    import colossalai.zero.low_level.low_level_optim  # noqa: F401  (applies the pending ZeRO patches)
    import colossalai.booster.booster  # noqa: F401  (and the Booster check)
    accel = get_accelerator()
    assert _colo_accelerator.is_portkit(accel)
    assert (accel.name, accel.communication_backend, accel.get_current_device()) == ("cpu", "gloo", torch.device("cpu"))
    assert not accel.support_set_device and accel.is_synchronous
    stream = accel.Stream()
    stream.wait_stream(accel.current_stream())  # the overlap path's calls work on the CPU
    with accel.stream(stream):
        accel.synchronize()
    assert all(getattr(cls().load(), "__doc__", "").startswith("portkit stand-in")
               for cls in (CPUAdamLoader, FusedOptimizerLoader, LayerNormLoader))
    assert all(p.state == "applied" for p in patching.all_patches() if p.framework == "colossalai")


def test_adam_and_layernorm_kernels_match_torch(colo):
    colo.enable()
    from colossalai.nn.optimizer import CPUAdam, FusedAdam
    for cls in (FusedAdam, CPUAdam):
        torch.manual_seed(0)
        ref = [torch.nn.Parameter(torch.randn(23, 7)), torch.nn.Parameter(torch.randn(3))]
        mine = [torch.nn.Parameter(p.detach().clone()) for p in ref]
        opts = (torch.optim.AdamW(ref, lr=1e-2, weight_decay=0.1), cls(mine, lr=1e-2, weight_decay=0.1, adamw_mode=True))
        for _ in range(3):
            for params, opt in zip((ref, mine), opts):
                torch.manual_seed(1)
                for p in params:
                    p.grad = torch.randn_like(p)
                opt.step()
        for a, b in zip(ref, mine):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=cls.__name__)

    from colossalai.nn.layer.layernorm import MixedFusedLayerNorm
    torch.manual_seed(0)
    x = torch.randn(5, 3, 31, requires_grad=True)
    ln = MixedFusedLayerNorm(31)
    torch.nn.init.normal_(ln.weight), torch.nn.init.normal_(ln.bias)
    y = ln(x)
    ref = torch.nn.functional.layer_norm(x, (31,), ln.weight, ln.bias, ln.eps)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(y)
    mine = torch.autograd.grad(y, (x, ln.weight, ln.bias), g)
    theirs = torch.autograd.grad(ref, (x, ln.weight, ln.bias), g)
    for a, b in zip(mine, theirs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_disable_restores_colossalai(colo):
    from colossalai.accelerator import api, get_accelerator
    from colossalai.kernel.kernel_loader import KernelLoader
    from colossalai.zero.low_level.low_level_optim import LowLevelZeroOptimizer
    original = get_accelerator()
    originals = (vars(KernelLoader)["load"], vars(LowLevelZeroOptimizer)["_sanity_checks"],
                 vars(LowLevelZeroOptimizer)["_run_reduction"])
    colo.enable()
    colo.enable()  # idempotent
    assert _colo_accelerator.is_portkit(get_accelerator())
    assert vars(KernelLoader)["load"] is not originals[0]
    colo.disable()
    assert api._ACCELERATOR is original
    assert (vars(KernelLoader)["load"], vars(LowLevelZeroOptimizer)["_sanity_checks"],
            vars(LowLevelZeroOptimizer)["_run_reduction"]) == originals


def test_outside_tested_range_refuses_with_version_and_range(colo, monkeypatch):
    real = patching.framework_version
    monkeypatch.setattr(patching, "framework_version", lambda d: "0.4.6" if d == "colossalai" else real(d))
    with pytest.raises(patching.PatchError, match=r"colossalai 0\.4\.6 is outside the tested range >=0\.5\.0,<0\.6"):
        colo.enable()
    assert {p.state for p in patching.all_patches() if p.name == "colossalai.accelerator"} == {"refused"}


class _FakeAscend(Backend):
    name, device_type, dist_backend = "fake-ascend", "npu", "hccl"

    def probe(self):
        return None

    def set_device(self, index):
        self.bound = index


def test_launch_uses_the_backends_dist_backend_simulated_hccl(colo, monkeypatch):
    """Colossal-AI picking nccl on NPU (ColossalAI #6205): the name comes from the backend only."""
    fake = _FakeAscend()
    monkeypatch.setattr(runtime, "_active", fake)
    colo.enable()
    from colossalai import initialize
    from colossalai.accelerator import get_accelerator
    calls = []
    monkeypatch.setattr(initialize.dist, "init_process_group", lambda **kw: calls.append(kw))
    monkeypatch.setenv("LOCAL_RANK", "3")
    initialize.launch(rank=0, world_size=1, host="127.0.0.1", port=1, backend="nccl", verbose=False)
    assert (get_accelerator().name, get_accelerator().communication_backend) == ("npu", "hccl")
    assert calls[0]["backend"] == "hccl" and fake.bound == 3


class _FakeDeviceModule:
    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        return lambda *a, **k: self.calls.append(name) or 7


class _FakeXPU(_FakeAscend):
    name, device_type, dist_backend = "fake-xpu", "xpu", "xccl"
    fake = _FakeDeviceModule()

    @property
    def module(self):
        return self.fake

    def current_device(self):
        return 1


def test_device_calls_go_to_the_backends_device_module_simulated_xpu(colo, monkeypatch):
    fake = _FakeXPU()
    monkeypatch.setattr(runtime, "_active", fake)
    accel = _colo_accelerator.make()
    accel.synchronize()
    accel.Stream()
    assert accel.memory_allocated() == 7 and fake.fake.calls == ["synchronize", "Stream", "memory_allocated"]
    assert (accel.name, accel.communication_backend, accel.get_current_device()) == ("xpu", "xccl", torch.device("xpu", 1))
    assert accel.support_set_device and not accel.is_synchronous


@pytest.mark.slow
def test_booster_ddp_and_low_level_zero_two_process_gloo_match_single_process(tmp_path):
    out = tmp_path / "colo.json"
    plugins = ["ddp", "zero1", "zero2", "zero2-hybridadam"]
    common.torchrun(os.path.join(HERE, "colo_worker.py"), [str(out), *plugins], backend="cpu")
    result = json.loads(out.read_text())
    assert (result["accelerator"], result["name"], result["comm"], result["dist_backend"]) == \
        ("PortkitColoAccelerator", "cpu", "gloo", "gloo")
    assert all(doc.startswith("portkit stand-in") for doc in result["loaders"].values())
    ref = common.reference_losses()
    for plugin in plugins:
        assert len(result["losses"][plugin]) == common.STEPS >= 3
        assert result["losses"][plugin] == pytest.approx(ref, rel=1e-5), plugin
