"""torch.cuda redirection to npu/mlu/xpu, against a simulated `torch.npu` device module.

No NPU exists here: the fake module records the calls it receives, and the tensor factories
underneath the redirection record the device they are given and build the tensor on the CPU.
"""
import types

import pytest
import torch

from portkit import patching, runtime
from portkit.patches import torch_cuda


class FakeBackend:
    name, device_type, dist_backend = "fake-npu", "npu", "hccl"


def fake_npu_module(calls):
    mod = types.ModuleType("torch.npu")
    mod.current_device = lambda: calls.append("current_device") or 0
    mod.device_count = lambda: calls.append("device_count") or 8
    mod.is_available = lambda: calls.append("is_available") or True
    mod.synchronize = lambda device=None: calls.append("synchronize")
    mod.manual_seed = lambda seed: calls.append(f"manual_seed({seed})")
    return mod


def recorder(fn, seen):
    """Record the device argument, then run `fn` on the CPU."""
    def run(*args, **kwargs):
        dev = kwargs.pop("device", None)
        strs = [a for a in args if isinstance(a, (str, torch.device))]
        seen.append(str(dev if dev is not None else (strs[0] if strs else None)))
        args = tuple(a for a in args if not isinstance(a, (str, torch.device)))
        return fn(*args, **kwargs)
    return run


@pytest.fixture
def simulated_npu(monkeypatch):
    calls, seen = [], []
    monkeypatch.setattr(torch, "npu", fake_npu_module(calls), raising=False)
    monkeypatch.setattr(runtime, "_active", FakeBackend())
    for name in ("zeros", "empty"):
        monkeypatch.setattr(torch, name, recorder(getattr(torch, name), seen))
    monkeypatch.setattr(torch.Tensor, "to", recorder(torch.Tensor.to, seen))
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, device: seen.append(str(device)) or self)
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda *a, **k: seen.append(k["backend"]))
    yield calls, seen
    torch_cuda.undo_redirect()


def test_torch_cuda_calls_go_to_npu_simulated(simulated_npu):
    calls, _ = simulated_npu
    real_sync = torch.cuda.synchronize
    torch_cuda.redirect("npu")
    assert torch.cuda.is_available() and torch.cuda.device_count() == 8
    torch.cuda.synchronize()
    torch.cuda.manual_seed(3)
    assert calls == ["is_available", "device_count", "synchronize", "manual_seed(3)"]
    assert torch_cuda.redirected_to() == "npu"
    torch_cuda.undo_redirect()
    assert torch.cuda.synchronize is real_sync and torch_cuda.redirected_to() is None


def test_cuda_devices_map_to_npu_simulated(simulated_npu):
    _, seen = simulated_npu
    x, lin = torch.ones(1), torch.nn.Linear(2, 2)
    torch_cuda.redirect("npu")
    seen.clear()
    torch.zeros(2, device="cuda")
    torch.empty(2, device=torch.device("cuda", 1))
    x.cuda()
    x.cuda(3)
    x.to("cpu")
    lin.cuda()
    torch.distributed.init_process_group(backend="nccl")
    assert seen == ["npu", "npu:1", "npu", "npu:3", "cpu", "npu", "hccl"]
    assert isinstance(torch.Generator(), torch.Generator)


def test_redirect_twice_is_an_error_simulated(simulated_npu):
    torch_cuda.redirect("npu")
    with pytest.raises(patching.PatchError, match="already redirected"):
        torch_cuda.redirect("npu")


def test_redirect_without_the_device_module_names_the_fix(monkeypatch):
    with pytest.raises(patching.PatchError, match="torch.mlu does not exist"):
        torch_cuda.redirect("mlu")


def test_patch_applies_on_npu_and_skips_on_cuda_simulated(simulated_npu, monkeypatch):
    (patch,) = [p for p in patching.all_patches() if p.name == "torch.cuda.redirect"]
    try:
        torch_cuda.install()
        assert patch.state == "applied" and torch_cuda.redirected_to() == "npu"
        torch_cuda.uninstall()
        assert patch.state == "undone" and torch_cuda.redirected_to() is None
        monkeypatch.setattr(runtime, "_active", types.SimpleNamespace(name="cuda", device_type="cuda"))
        torch_cuda.install()
        assert patch.state == "skipped" and "torch.cuda is native" in patch.reason
    finally:
        torch_cuda.uninstall()
        patch.state, patch.reason = "registered", ""


def test_host_device_module_answers_the_calls_frameworks_make(fresh_runtime):
    cuda = fresh_runtime.select("cpu").module
    assert cuda.is_available() and cuda.current_device() == torch.device("cpu")
    state = cuda.get_rng_state()
    a = torch.rand(2)
    cuda.set_rng_state(state)
    assert torch.equal(torch.rand(2), a)
    start, end = cuda.Event(enable_timing=True), cuda.Event(enable_timing=True)
    start.record(), end.record()
    assert end.elapsed_time(start) <= 0 <= start.elapsed_time(end)
    with cuda.stream(cuda.Stream()):
        cuda.current_stream().synchronize()
    # torch 2.11's optimizers ask it in step() on a machine whose accelerator is CUDA
    assert cuda.is_current_stream_capturing() is False
    with pytest.raises(AttributeError, match="torch.cuda.CUDAGraph has no host counterpart"):
        cuda.CUDAGraph


class AtExit:
    """Stands for the atexit module: what is registered, with unregister as atexit's."""
    def __init__(self):
        self.calls = []

    def register(self, fn):
        self.calls.append(fn)

    def unregister(self, fn):
        self.calls = [f for f in self.calls if f is not fn]


def test_a_gloo_group_is_released_at_exit_once_and_others_are_not(monkeypatch, tmp_path):
    """gloo aborts a process at exit now and then (runtime.release_gloo_at_exit says how):
    every gloo group made through the redirection registers the release, once a process."""
    dist, at_exit = torch.distributed, AtExit()
    monkeypatch.setattr(runtime, "atexit", at_exit)
    init = torch_cuda._released_at_exit(dist.init_process_group)
    for attempt in range(2):
        init("gloo", init_method=f"file://{tmp_path}/store{attempt}", rank=0, world_size=1)
        dist.destroy_process_group()
    assert at_exit.calls == [runtime._release_and_drain]
    at_exit.calls.clear()
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "nccl")
    torch_cuda._released_at_exit(lambda *a, **k: None)("nccl")
    assert at_exit.calls == []
