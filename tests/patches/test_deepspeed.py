"""DeepSpeed adapter: accelerator delegation, op-builder fallback, version gate, undo, ZeRO runs."""
import json
import os
import sys

import pytest
import torch

from portkit import patching, runtime
from portkit.backend import Backend
from portkit.patches import _ds_accelerator
from portkit.patches import deepspeed as ds_patch

deepspeed = pytest.importorskip("deepspeed")

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import ds_common as common  # noqa: E402


@pytest.fixture
def ds(fresh_runtime, monkeypatch):
    monkeypatch.setenv("PORTKIT_BACKEND", "cpu")
    yield ds_patch
    patching.disable("deepspeed")


def _real_accelerator():
    return sys.modules["deepspeed.accelerator.real_accelerator"]


def test_accelerator_answers_from_the_backend(ds):
    ds.enable()
    from deepspeed.accelerator import get_accelerator
    accel = get_accelerator()
    assert type(accel).__name__ == "PortkitAccelerator"
    assert (accel._name, accel.device_name(1), accel.communication_backend_name()) == ("cpu", "cpu", "gloo")
    assert accel.device_count() == runtime.active().device_count()
    assert accel.on_accelerator(torch.zeros(1)) and accel.IntTensor([3]).dtype == torch.int32
    assert accel.create_op_builder("ShareMemCommBuilder") is None  # no 60 s C++ build at init_distributed
    assert accel.create_op_builder("FusedAdamBuilder").load().portkit
    assert all(p.state == "applied" for p in patching.all_patches() if p.framework == "deepspeed")


def test_fused_adam_resolves_to_portkit_and_matches_torch(ds):
    ds.enable()
    from deepspeed.ops.adam import DeepSpeedCPUAdam, FusedAdam
    from deepspeed.ops.op_builder import FusedAdamBuilder
    assert FusedAdamBuilder().load().portkit
    cases = [(FusedAdam, dict(adam_w_mode=True), torch.optim.AdamW),
             (FusedAdam, dict(adam_w_mode=False), torch.optim.Adam),
             (DeepSpeedCPUAdam, dict(adamw_mode=True), torch.optim.AdamW)]
    for ds_cls, mode, torch_cls in cases:
        torch.manual_seed(0)
        ref = [torch.nn.Parameter(torch.randn(37, 13)), torch.nn.Parameter(torch.randn(5))]
        mine = [torch.nn.Parameter(p.detach().clone()) for p in ref]
        opts = (torch_cls(ref, lr=1e-2, weight_decay=0.1), ds_cls(mine, lr=1e-2, weight_decay=0.1, **mode))
        for _ in range(3):
            grads = [torch.randn_like(p) for p in ref]
            for params, opt in zip((ref, mine), opts):
                for p, g in zip(params, grads):
                    p.grad = g.clone()
                opt.step()
        for a, b in zip(ref, mine):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=f"{ds_cls.__name__} {mode}")


def test_disable_restores_deepspeeds_accelerator_and_builders(ds):
    from deepspeed.accelerator import get_accelerator
    import deepspeed.ops.op_builder as op_builder
    original, original_builder = get_accelerator(), op_builder.FusedAdamBuilder
    ds.enable()
    assert _ds_accelerator.is_portkit(get_accelerator())
    assert op_builder.FusedAdamBuilder is not original_builder
    ds.enable()  # idempotent
    ds.disable()
    assert get_accelerator() is original
    assert op_builder.FusedAdamBuilder is original_builder


def test_outside_tested_range_refuses_with_version_and_range(ds, monkeypatch):
    real = patching.framework_version
    monkeypatch.setattr(patching, "framework_version", lambda d: "0.12.0" if d == "deepspeed" else real(d))
    with pytest.raises(patching.PatchError, match=r"deepspeed 0\.12\.0 is outside the tested range >=0\.19\.8,<0\.20"):
        ds.enable()
    states = {p.name: p.state for p in patching.all_patches() if p.framework == "deepspeed"}
    assert states["deepspeed.accelerator"] == "refused"
    assert not _ds_accelerator.is_portkit(_real_accelerator().ds_accelerator)


class _FakeAscend(Backend):
    name, device_type, dist_backend = "fake-ascend", "npu", "hccl"

    def probe(self):
        return None


def test_communication_backend_is_the_backends_dist_backend_simulated_hccl(ds, monkeypatch):
    """NPU frameworks defaulting to nccl (DeepSpeed #7312): the name comes from the backend only."""
    fake = _FakeAscend()
    monkeypatch.setattr(runtime, "_active", fake)
    monkeypatch.setattr(runtime, "select", lambda name=None: fake)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    calls = []
    monkeypatch.setattr(deepspeed, "init_distributed", lambda **kw: calls.append(kw))
    ds.init()
    from deepspeed.accelerator import get_accelerator
    accel = get_accelerator()
    assert (accel.communication_backend_name(), accel._name, accel.device_name(0)) == ("hccl", "npu", "npu:0")
    assert calls == [{"dist_backend": "hccl"}]


class _FakeDeviceModule:
    """torch.<device> of a simulated accelerator: records the calls it receives."""

    class Stream:
        pass

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        return lambda *a, **k: self.calls.append((name, a)) or 7


class _FakeAccel(_FakeAscend):
    name, device_type, dist_backend = "fake-mlu", "mlu", "cncl"
    fake = _FakeDeviceModule()

    @property
    def module(self):
        return self.fake


def test_device_calls_go_to_the_backends_device_module_simulated_mlu(ds, monkeypatch):
    fake = _FakeAccel()
    monkeypatch.setattr(runtime, "_active", fake)
    accel = _ds_accelerator.make()
    accel.synchronize(1)
    accel.manual_seed(5)
    assert accel.memory_allocated(0) == 7 and accel.max_memory_cached() == 7
    assert accel.Stream is _FakeDeviceModule.Stream and not accel.is_synchronized_device()
    assert [c[0] for c in fake.fake.calls] == ["synchronize", "manual_seed", "memory_allocated", "max_memory_reserved"]
    assert accel.communication_backend_name() == "cncl" and accel.device_name(2) == "mlu:2"


def _check_losses(result: dict, runs: list[str], rtol: float) -> None:
    ref = common.reference_losses()
    assert result["accelerator"] == "PortkitAccelerator" and result["world"] == 2
    assert result["comm"] == result["dist_backend"]
    for run in runs:
        assert len(result["losses"][run]) == common.STEPS >= 3
        assert result["losses"][run] == pytest.approx(ref, rel=rtol), f"run {run}"
    assert ref[-1] < ref[0]  # it trains


@pytest.mark.slow
def test_zero2_zero3_two_process_gloo_match_single_process(tmp_path):
    out, extensions = tmp_path / "ds.json", tmp_path / "torch_extensions"
    common.torchrun(os.path.join(HERE, "ds_worker.py"), [str(out), "2", "3", "2:fused", "3:fused"], backend="cpu",
                    env={"TORCH_EXTENSIONS_DIR": str(extensions)})
    assert not extensions.exists() or not any(extensions.iterdir()), "DeepSpeed compiled an op"
    result = json.loads(out.read_text())
    assert (result["device_type"], result["comm"]) == ("cpu", "gloo")
    _check_losses(result, ["2", "3", "2:fused", "3:fused"], rtol=1e-5)


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(torch.accelerator.device_count() < 2, reason="needs two GPUs of one host")
def test_zero2_zero3_two_gpu_nccl_match_single_process(tmp_path):
    out = tmp_path / "ds_gpu.json"
    common.torchrun(os.path.join(HERE, "ds_worker.py"), [str(out), "2", "3", "2:fused", "3:fused"], backend=None)
    result = json.loads(out.read_text())
    assert (result["device_type"], result["comm"]) == ("cuda", "nccl")
    _check_losses(result, ["2", "3", "2:fused", "3:fused"], rtol=1e-4)
