"""Reading Slurm's allocation: node list forms, scontrol, task and GPU counts."""
import os
import stat
from types import SimpleNamespace

import pytest

from portkit.launch import LaunchError, expand_nodelist, first_host, slurm_job, topology


@pytest.mark.parametrize("spec,hosts", [
    ("node[01-04,07]", ["node01", "node02", "node03", "node04", "node07"]),
    ("a,b", ["a", "b"]),
    ("gpu[1-2],cpu5", ["gpu1", "gpu2", "cpu5"]),
    ("dcu-[008-010]", ["dcu-008", "dcu-009", "dcu-010"]),
])
def test_expand_nodelist(spec, hosts):
    assert expand_nodelist(spec) == hosts


def test_unreadable_nodelist_says_what_to_do():
    with pytest.raises(LaunchError, match="--rdzv-endpoint"):
        expand_nodelist("node[a-c]")


def test_scontrol_is_asked_first_simulated(tmp_path, monkeypatch):
    fake = tmp_path / "scontrol"
    fake.write_text("#!/bin/sh\n[ \"$1 $2\" = 'show hostnames' ] || exit 3\necho head-node\necho other\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert first_host("weird{syntax}") == "head-node"


SLURM = {"SLURM_JOB_ID": "4242", "SLURM_NNODES": "4", "SLURM_NODEID": "3",
         "SLURM_JOB_NODELIST": "node[01-04]", "SLURM_NTASKS_PER_NODE": "8(x4)", "PATH": "/nonexistent"}


def test_slurm_job_from_environment_simulated(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    job = slurm_job(SLURM)
    assert (job.nnodes, job.node_rank, job.first_host, job.job_id, job.nproc_per_node) == (4, 3, "node01", "4242", 8)
    assert slurm_job({**SLURM, "SLURM_GPUS_ON_NODE": "4"}).nproc_per_node == 4
    assert slurm_job({"PATH": "/bin"}) is None


def test_second_task_on_a_node_is_refused_simulated(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(LaunchError, match="one task per node"):
        slurm_job({**SLURM, "SLURM_LOCALID": "1"})


def args(**kw):
    base = dict(nnodes=None, nproc_per_node=None, rdzv_endpoint=None, rdzv_id=None)
    return SimpleNamespace(**{**base, **kw})


def test_topology_from_slurm_and_flags_simulated(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    backend = SimpleNamespace(device_count=lambda: 1)
    topo = topology(args(), backend, SLURM)
    assert (topo.nnodes, topo.nproc_per_node, topo.rdzv_endpoint, topo.rdzv_id) == (4, 8, "node01:29500", "4242")
    topo = topology(args(nproc_per_node=2, rdzv_endpoint="h:1"), backend, SLURM)
    assert (topo.nproc_per_node, topo.rdzv_endpoint) == (2, "h:1")


def test_several_nodes_without_rendezvous_is_an_error():
    with pytest.raises(LaunchError, match="--rdzv-endpoint"):
        topology(args(nnodes=2, nproc_per_node=2), SimpleNamespace(device_count=lambda: 1), {})
