"""What `portkit launch` builds: torchrun's argument list and the job's environment."""
import argparse
import sys
from types import SimpleNamespace

import pytest

import portkit.tuning
from portkit import hookimpl, launch, runtime
from portkit.launch import LaunchError, Topology, launch_env, program, torchrun_argv
from portkit.plugins import discover


def test_program_for_recipe_script_and_module():
    assert program(["r.yaml", "--steps", "3"]) == ["-m", "portkit.cli", "run", "r.yaml", "--steps", "3"]
    exec_ = ["-m", "portkit.cli", "exec", "--"]  # scripts run adapted in every worker
    assert program(["--", "train.py", "--lr", "1"]) == exec_ + ["train.py", "--lr", "1"]
    assert program(["--", "-m", "pkg.mod", "x"]) == exec_ + ["-m", "pkg.mod", "x"]
    with pytest.raises(LaunchError, match="nothing to launch"):
        program(["--"])
    with pytest.raises(LaunchError, match="expected a recipe"):
        program(["notes.txt"])


def test_torchrun_argv_single_node_and_rendezvous():
    one = torchrun_argv(Topology(1, 2, 0, None, "portkit"), ["t.py"])
    assert one == [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
                   "--standalone", "t.py"]
    many = torchrun_argv(Topology(4, 8, 1, "n01:29500", "77"), ["t.py"])
    assert many[-7:] == ["--rdzv-backend", "c10d", "--rdzv-endpoint", "n01:29500", "--rdzv-id", "77", "t.py"]


class FakeBackend:
    name = "fakegpu"
    visible_devices_env = "FAKE_VISIBLE_DEVICES"

    def launch_env(self):
        return {"FAKE_COMM_TIMEOUT": "20", "FAKE_SOCKET_IFNAME": "=eth0"}


class GoodPlugin:
    @hookimpl
    def portkit_launch_env(self, backend, env):
        return {"FROM_PLUGIN": f"{backend.name}:{env['FAKE_COMM_TIMEOUT']}"}


class BrokenPlugin:
    @hookimpl
    def portkit_launch_env(self, backend, env):
        raise RuntimeError("no NIC found")


@pytest.fixture
def plugins(monkeypatch):
    monkeypatch.setattr(runtime, "_plugins", discover(extra=[("good", GoodPlugin()), ("broken", BrokenPlugin())]))
    yield
    runtime.reset()


def test_env_layers_backend_plugins_devices(plugins, capsys):
    env, kept = launch_env(FakeBackend(), "0,1", None, {"FAKE_SOCKET_IFNAME": "=ib0"})
    assert env["PORTKIT_BACKEND"] == "fakegpu" and env["FAKE_VISIBLE_DEVICES"] == "0,1"
    assert env["FAKE_COMM_TIMEOUT"] == "20" and env["FROM_PLUGIN"] == "fakegpu:20"
    assert "FAKE_SOCKET_IFNAME" not in env and kept == ["FAKE_SOCKET_IFNAME"]  # the shell's choice stays
    err = capsys.readouterr().err
    assert "plugin 'broken'" in err and "no NIC found" in err and "skipped" in err


def test_devices_on_a_backend_without_the_variable_is_an_error(plugins):
    backend = SimpleNamespace(name="cpu", visible_devices_env=None, launch_env=dict)
    with pytest.raises(LaunchError, match="drop --devices"):
        launch_env(backend, "0", None, {})


def test_tune_profile_env_is_added(plugins, monkeypatch):
    monkeypatch.setattr(portkit.tuning, "launch_env", lambda name: {"NCCL_IB_TIMEOUT": 22, "PROFILE": name},
                        raising=False)
    env, _ = launch_env(FakeBackend(), None, "hpc", {})
    assert env["NCCL_IB_TIMEOUT"] == "22" and env["PROFILE"] == "hpc"


def parse(*argv):
    p = argparse.ArgumentParser()
    launch.configure(p)
    return p.parse_args(list(argv))


def test_dry_run_prints_layout_command_and_env_and_runs_nothing(capsys, fresh_runtime):
    rc = launch.main(parse("--backend", "cpu", "--nproc-per-node", "2", "--dry-run", "--", "nowhere.py", "a"))
    out = capsys.readouterr().out
    assert rc == 0
    assert "world 2 = tp 1 x dp 2 x pp 1" in out and "PORTKIT_BACKEND=cpu" in out
    assert "torch.distributed.run --nnodes 1 --nproc-per-node 2 --standalone -m portkit.cli exec -- nowhere.py a" in out


def test_bad_layout_is_reported_not_raised(capsys, fresh_runtime):
    rc = launch.main(parse("--backend", "cpu", "--nproc-per-node", "2", "--tp", "4", "--dry-run", "x.py"))
    assert rc == 2 and "tensor-parallel size 4" in capsys.readouterr().err


needs_tuning = pytest.mark.skipif(getattr(portkit.tuning, "launch_env", None) is None,
                                  reason="portkit.tuning.launch_env is not in this build")


@needs_tuning
def test_dry_run_with_a_shipped_tuning_profile(capsys, fresh_runtime):
    rc = launch.main(parse("--backend", "cpu", "--nproc-per-node", "2", "--tune-profile", "nvidia-ib",
                           "--dry-run", "x.py"))
    out = capsys.readouterr().out
    assert rc == 0 and "NCCL_IB_TIMEOUT=22" in out


@needs_tuning
def test_unknown_tuning_profile_stops_the_launch(capsys, fresh_runtime):
    rc = launch.main(parse("--backend", "cpu", "--nproc-per-node", "2", "--tune-profile", "nope", "--dry-run", "x.py"))
    assert rc == 2 and "nope" in capsys.readouterr().err
