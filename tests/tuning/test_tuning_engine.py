"""plan / apply / verify / rollback on a fake node root."""
import pytest

from portkit.tuning import engine, profiles
from portkit.tuning.engine import TuneError
from portkit.tuning.snapshot import SnapshotError

BASE_SETS = {  # base keys whose stock value differs from the profile's
    "net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem", "net.core.rmem_max", "net.core.wmem_max",
    "net.core.netdev_max_backlog", "net.ipv4.tcp_mtu_probing", "net.ipv4.tcp_slow_start_after_idle",
    "net.core.somaxconn", "net.ipv4.tcp_max_syn_backlog", "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_keepalive_intvl", "net.ipv4.tcp_keepalive_probes", "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_local_reserved_ports", "net.ipv4.neigh.default.gc_thresh1",
    "net.ipv4.neigh.default.gc_thresh2", "net.ipv4.neigh.default.gc_thresh3", "vm.swappiness",
    "vm.min_free_kbytes", "memlock", "nofile", "nproc",
}


@pytest.fixture
def load(plugins):
    known = profiles.registry(plugins)
    return lambda name: profiles.load(name, known=known)


def test_plan_lists_exactly_the_differences(node, load):
    changes = {c.key: c for c in engine.plan(load("base"), node)}
    assert {k for k, c in changes.items() if c.action == "set"} == BASE_SETS
    assert changes["fs.nr_open"].action == "unchanged" and changes["kernel.pid_max"].action == "unchanged"
    rmem = changes["net.ipv4.tcp_rmem"]
    assert (rmem.current, rmem.wanted) == ("4096 131072 6291456", ">=4096 131072 16777216")
    assert rmem.path == str(node / "proc/sys/net/ipv4/tcp_rmem")
    assert changes["nofile"].current == "1024/4096 (soft/hard)" and changes["nofile"].wanted == "1048576"
    assert changes["nproc"].current == "4096/- (soft/hard)" and changes["memlock"].current is None
    assert changes["numa_balancing"].action == "verify-only" and changes["numa_balancing"].ok
    assert changes["TORCH_NCCL_ASYNC_ERROR_HANDLING"].action == "launch"


def test_plan_reads_checks_from_proc_and_sys(node, load):
    checks = {c.key: c for c in engine.plan(load("dcu-rocm"), node) if c.kind == "check"}
    assert (checks["iommu"].current, checks["iommu"].ok) == (None, False)
    assert (checks["cpu_governor"].current, checks["cpu_governor"].ok) == ("powersave", False)
    (node / "proc/cmdline").write_text("BOOT_IMAGE=/vmlinuz ro amd_iommu=on iommu=pt\n")
    (node / "proc/sys/kernel/numa_balancing").write_text("1\n")
    checks = {c.key: c for c in engine.plan(load("dcu-rocm"), node) if c.kind == "check"}
    assert (checks["iommu"].current, checks["iommu"].ok) == ("amd_iommu=on iommu=pt", True)
    assert (checks["numa_balancing"].current, checks["numa_balancing"].ok) == ("1", False)
    thp = {c.key: c for c in engine.plan(load("nvidia-ib"), node)}["transparent_hugepage"]
    assert (thp.current, thp.ok) == ("madvise", False)


def test_apply_then_verify_passes(node, load):
    prof = load("base")
    assert engine.verify(prof, node)  # stock node: many mismatches
    result = engine.apply(prof, node)
    assert result.mismatches == [] and engine.verify(prof, node) == []
    assert (node / "proc/sys/net/core/somaxconn").read_text() == "65535\n"
    assert (node / "proc/sys/net/ipv4/tcp_keepalive_time").read_text() == "300\n"
    limits = (node / engine.LIMITS_FILE).read_text()
    assert "*     hard  memlock  unlimited" in limits and "root  soft  nofile   1048576" in limits
    assert result.snapshot.parent == node / engine.SNAPSHOT_DIR and result.snapshot.is_file()
    again = engine.apply(prof, node)  # idempotent: nothing left to write
    assert (again.snapshot, again.written) == (None, [])


def test_apply_writes_nccl_conf_keeping_site_lines(node, load):
    prof = load("nvidia-ib")
    result = engine.apply(prof, node)
    conf = (node / "etc/nccl.conf").read_text()
    assert conf.startswith("# site settings\nNCCL_DEBUG=WARN\n") and "NCCL_IB_TIMEOUT=22\n" in conf
    assert "TORCH_NCCL" not in conf  # only NCCL_* keys go to nccl.conf
    assert (node / "etc/nccl.conf").stat().st_mode & 0o777 == 0o640
    # apply cannot fix checks: they are what verify still reports
    assert {c.key for c in result.mismatches} == {"cpu_governor", "transparent_hugepage"}


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_injected_failure_mid_apply_leaves_tree_byte_identical(node, load, tree, where):
    prof = load("nvidia-ib")
    n = len(engine.planned_writes(prof, node, engine.plan(prof, node)))
    fail_at = {"first": 1, "middle": n // 2, "last": n}[where]
    before = tree(node)
    with pytest.raises(TuneError, match=f"injected write fault.*Restored the {fail_at} file"):
        engine.apply(prof, node, fail_at=fail_at)
    assert tree(node) == before


def test_rollback_restores_every_byte_and_removes_created_files(node, load, tree):
    (node / "etc/nccl.conf").unlink()
    before = tree(node)
    result = engine.apply(load("nvidia-ib"), node)
    assert (node / "etc/nccl.conf").exists() and tree(node, skip="var") != before
    restored = engine.rollback(result.snapshot, node)
    assert str(node / "etc/nccl.conf") in restored
    assert tree(node, skip="var") == before
    assert engine.rollback(result.snapshot, node)  # a second rollback is a no-op, not an error
    assert tree(node, skip="var") == before


def test_rollback_refuses_a_snapshot_of_another_root(node, load, tmp_path):
    result = engine.apply(load("base"), node)
    with pytest.raises(SnapshotError, match="taken under root"):
        engine.rollback(result.snapshot, tmp_path)


def test_apply_refuses_unwritable_target_before_touching_anything(node, load, tree):
    limits_d = node / "etc/security/limits.d"
    (limits_d / "20-nproc.conf").unlink()
    limits_d.rmdir()
    limits_d.write_text("")  # a regular file where the directory should be: nothing can go under it
    before = tree(node)
    with pytest.raises(TuneError, match=r"refused, nothing was changed(.|\n)*limits.d is not a directory"):
        engine.apply(load("base"), node)
    assert tree(node) == before


def test_apply_refuses_a_sysctl_the_kernel_does_not_have(node, load, tree):
    (node / "proc/sys/net/ipv4/tcp_mtu_probing").unlink()
    before = tree(node)
    with pytest.raises(TuneError, match="tcp_mtu_probing: does not exist"):
        engine.apply(load("base"), node)
    assert tree(node) == before


def test_custom_snapshot_dir(node, load, tmp_path):
    result = engine.apply(load("base"), node, snapshot_dir=tmp_path / "snaps")
    assert result.snapshot.parent == tmp_path / "snaps" and not (node / "var").exists()


def test_at_least_values_never_lower_a_node_tuned_higher(node, load):
    (node / "proc/sys/net/core/somaxconn").write_text("131072\n")
    (node / "proc/sys/net/ipv4/tcp_rmem").write_text("4096\t87380\t33554432\n")
    changes = {c.key: c for c in engine.plan(load("base"), node)}
    assert changes["net.core.somaxconn"].action == "unchanged"
    assert changes["net.ipv4.tcp_rmem"].action == "set"  # default 87380 is below 131072
    engine.apply(load("base"), node)
    assert (node / "proc/sys/net/core/somaxconn").read_text() == "131072\n"
    assert (node / "proc/sys/net/ipv4/tcp_rmem").read_text() == "4096 131072 33554432\n"
    assert engine.verify(load("base"), node) == []
