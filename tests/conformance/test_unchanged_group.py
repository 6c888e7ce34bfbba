"""The `unchanged` conformance group on the cpu backend: the packaged CUDA-style scripts run
through `portkit exec` / `portkit launch` with the losses of their hand edits for the CPU."""
import collections
import os
import subprocess
import sys
from types import SimpleNamespace

from portkit.backends.cpu import CPUBackend
from portkit.conformance import unchanged
from portkit.conformance.common import Context


class OneDevice(CPUBackend):
    """An accelerator with one device, as the group sees it; the scripts still run on the cpu backend."""
    device_type = "one-device accelerator"

    def device_count(self) -> int:
        return 1


def test_unchanged_group_passes_on_cpu_and_a_wrong_reference_fails(tmp_path):
    checks = unchanged.unchanged(Context(backend=CPUBackend(), workdir=tmp_path, timeout=300))
    assert [(c.name, c.ok, c.reason) for c in checks] == [
        ("train.py (nanoGPT) through portkit exec", True, ""),
        ("apex_train.py (apex fused modules) through portkit exec", True, ""),
        ("train.py DDP 'nccl' through portkit launch (2 processes)", True, "")]
    assert unchanged.same_losses([4.0, 3.9], [4.0, 3.8], 1e-4).startswith("step 1: loss 3.9 through portkit vs 3.8")


def test_ddp_check_on_a_one_device_machine_runs_a_world_of_one(tmp_path):
    """It failed there ("2 processes need 2 devices"); now 1 process: `portkit launch
    --nproc-per-node 1` (init_process_group('nccl') -> the backend's library) against torchrun."""
    ctx = Context(backend=OneDevice(), workdir=tmp_path, timeout=300)
    train = unchanged.hand_edited("train.py", unchanged.TRAIN_EDITS, tmp_path / "edited")
    check = unchanged.ddp(ctx, train, rel=1e-4)
    assert (check.name, check.ok, check.reason) == ("train.py DDP 'nccl' through portkit launch (1 process)", True, "")


def test_process_counts_follow_the_devices(tmp_path, monkeypatch):
    ctx = Context(backend=OneDevice(), workdir=tmp_path)
    assert (unchanged.world_size(ctx), unchanged.world_size(ctx, 4)) == (1, 1)
    monkeypatch.setattr(OneDevice, "device_count", lambda self: 8)
    assert (unchanged.world_size(ctx), unchanged.world_size(ctx, 4)) == (2, 4)
    assert unchanged.world_size(Context(backend=CPUBackend(), workdir=tmp_path), 4) == 4  # processes share the host
    assert [unchanged.megatron_layout(n) for n in (1, 2, 3, 4)] == [(1, 1), (2, 1), (2, 1), (2, 2)]


def test_frameworks_not_installed_fail_as_missing_with_the_process_counts(tmp_path, monkeypatch):
    monkeypatch.setattr(unchanged, "importlib", SimpleNamespace(util=SimpleNamespace(find_spec=lambda name: None)))
    checks = unchanged.framework_checks(Context(backend=CPUBackend(), workdir=tmp_path), rel=1e-4)
    assert [(c.name, c.ok, c.reason) for c in checks] == [
        ("ds_train.py (DeepSpeed ZeRO-2) through portkit launch (2 processes)", False,
         "missing: deepspeed is not installed (pip install portkit[frameworks])"),
        ("colo_train.py (Colossal-AI TorchDDP) through portkit launch (2 processes)", False,
         "missing: colossalai is not installed (see the README's setup)"),
        ("mcore_gpt.py (Megatron-core TP=2 x PP=2) through portkit launch (4 processes)", False,
         "missing: megatron-core is not installed (pip install portkit[frameworks])")]


def test_only_the_reference_runs_again_after_a_failure(tmp_path, monkeypatch):
    """A plain-torch reference that aborts is run again, up to three times in all; a failing
    portkit side is not."""
    runs, fail = [], collections.Counter()

    def run_killable(cmd, env, timeout, log):
        runs.append(cmd[0])
        if fail[cmd[0]]:
            fail[cmd[0]] -= 1
            return -6, "aborted"
        return 0, '{"losses": [4.0]}'
    monkeypatch.setattr(unchanged, "run_killable", run_killable)
    ctx = Context(backend=CPUBackend(), workdir=tmp_path)
    fail["reference"] = 1
    assert unchanged.compare(ctx, "check", ["portkit"], ["reference"], 1e-4).ok
    assert runs == ["portkit", "reference", "reference"]
    runs.clear()
    fail["reference"] = 2
    assert unchanged.compare(ctx, "check", ["portkit"], ["reference"], 1e-4).ok
    assert runs == ["portkit", "reference", "reference", "reference"]
    runs.clear()
    fail["reference"] = 3
    check = unchanged.compare(ctx, "check", ["portkit"], ["reference"], 1e-4)
    assert not check.ok and "exited -6" in check.reason and runs == ["portkit"] + ["reference"] * 3
    runs.clear()
    fail["portkit"] = 1
    check = unchanged.compare(ctx, "check", ["portkit"], ["reference"], 1e-4)
    assert not check.ok and "exited -6" in check.reason and runs == ["portkit"]


def test_the_plain_reference_imports_the_exit_drain_and_not_portkit():
    """Every interpreter a reference run starts (its spawned or torchrun workers inherit the
    environment) registers the sleep at exit that keeps torch's gloo from aborting after the work."""
    probe = "import sitecustomize, sys; print(sitecustomize.__file__, 'portkit' in sys.modules)"
    env = unchanged.plain_env({k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == [str(unchanged.EXIT_DRAIN / "sitecustomize.py"), "False"], out.stderr
