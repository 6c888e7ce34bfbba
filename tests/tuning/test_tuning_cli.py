"""`portkit tune`: in process through the command module, and one real subprocess per path that
needs it (the `portkit` entry point, PORTKIT_TUNE_FAIL_AT)."""
import argparse
import json
import os
import subprocess
import sys

import pytest

from portkit.tuning import cli


@pytest.fixture
def tune(plugins, monkeypatch, fresh_runtime):
    def run(*argv):
        parser = argparse.ArgumentParser()
        cli.configure(parser)
        return cli.main(parser.parse_args([str(a) for a in argv]))
    return run


def portkit(*argv, **env):
    full = {**os.environ, "PORTKIT_PLUGINS": "cpu", "OMP_NUM_THREADS": "1", **env}
    return subprocess.run([sys.executable, "-m", "portkit.cli", "tune", *map(str, argv)],
                          capture_output=True, text=True, env=full, timeout=120)


def test_cli_plan_subprocess_smoke(node):
    done = portkit("plan", "nvidia-ib", "--root", node, "--json")
    assert done.returncode == 0, done.stderr
    rows = {r["key"]: r for r in json.loads(done.stdout)}
    assert rows["net.core.somaxconn"]["current"] == "4096" and rows["net.core.somaxconn"]["action"] == "set"
    assert rows["NCCL_IB_HCA"]["kind"] == "nccl.conf" and rows["cpu_governor"]["ok"] is False
    table = portkit("plan", "base", "--root", node, COLUMNS="160")
    assert table.returncode == 0 and "somaxconn" in table.stdout and "key(s) to set" in table.stdout


def test_cli_injected_failure_through_env_restores_everything(node, tree):
    before = tree(node)
    done = portkit("apply", "base", "--root", node, "--yes", PORTKIT_TUNE_FAIL_AT="3")
    assert done.returncode == 1 and "injected write fault (PORTKIT_TUNE_FAIL_AT=3)" in done.stderr
    assert "as it was before" in done.stderr and tree(node) == before


def test_cli_apply_needs_yes_then_verify_passes(node, tune, tree, capsys):
    before = tree(node)
    assert tune("verify", "base", "--root", node) == 1
    assert tune("apply", "base", "--root", node) == 2
    assert "re-run with --yes" in capsys.readouterr().err and tree(node) == before
    assert tune("apply", "base", "--root", node, "--yes") == 0
    assert "snapshot: " in capsys.readouterr().out
    assert tune("verify", "base", "--root", node, "--json") == 0
    assert json.loads(capsys.readouterr().out) == []


def test_cli_verify_json_lists_mismatches(node, tune, capsys):
    assert tune("verify", "dcu-rocm", "--root", node, "--json") == 1
    keys = {r["key"] for r in json.loads(capsys.readouterr().out)}
    assert {"iommu", "cpu_governor", "net.core.somaxconn"} <= keys and "numa_balancing" not in keys


def test_cli_rollback_restores_the_tree(node, tune, tree, capsys):
    before = tree(node)
    assert tune("apply", "nvidia-ib", "--root", node, "--yes") == 1  # checks still fail, settings applied
    snap = next((node / "var/lib/portkit/tuning/snapshots").glob("*.json"))
    assert "portkit tune rollback" in capsys.readouterr().out
    assert tune("rollback", snap, "--root", node) == 0
    assert tree(node, skip="var") == before


def test_cli_bad_profile_exits_2_and_touches_nothing(node, tune, tree, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("extends: base\nsysctl: {net.ipv4.tcp_rmem: '4096 87380'}\n")
    before = tree(node)
    assert tune("apply", bad, "--root", node, "--yes") == 2
    err = capsys.readouterr().err
    assert "invalid profile" in err and str(bad) in err and "sysctl.net.ipv4.tcp_rmem" in err
    assert tree(node) == before
    assert tune("validate", bad) == 2 and tune("validate") == 0


@pytest.mark.parametrize("fmt,expect", [
    ("sysctl.d", "# at least 4096 131072 16777216: `portkit tune apply` keeps larger values, this file does not\n"
                 "net.ipv4.tcp_rmem = 4096 131072 16777216\n"),
    ("limits.d", "*     soft  memlock  unlimited\n"),
    ("env", "export NCCL_SOCKET_IFNAME='^lo,docker,virbr'\n"),
    ("nccl.conf", "NCCL_IB_TIMEOUT=22\n"),
])
def test_cli_export_formats(tune, tmp_path, fmt, expect):
    out = tmp_path / "out"
    assert tune("export", "nvidia-ib", "--format", fmt, "-o", out) == 0
    text = out.read_text()
    assert text.startswith("# portkit tuning profile nvidia-ib (base -> nvidia-ib)") and expect in text


def test_exported_env_file_is_sourceable(tune, tmp_path):
    out = tmp_path / "env.sh"
    assert tune("export", "ethernet", "--format", "env", "-o", out) == 0
    done = subprocess.run(["sh", "-c", f". {out} && printf %s \"$NCCL_SOCKET_IFNAME\""],
                          capture_output=True, text=True, check=True)
    assert done.stdout == "^lo,docker,virbr"
