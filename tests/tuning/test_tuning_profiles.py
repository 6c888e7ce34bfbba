"""Profiles: shipped ones validate and cite their values; extends merges; bad files are refused."""
import re
import textwrap

import pytest

import portkit
from portkit.plugins import discover
from portkit.tuning import launch_env, profiles
from portkit.tuning.schema import ProfileError

REQUIRED = {"ethernet", "nvidia-ib", "dcu-rocm", "ascend"}


def test_shipped_profiles_all_validate(plugins):
    results = profiles.validate_all(plugins)
    assert REQUIRED <= set(results)
    assert {name: err for name, err in results.items() if err} == {}


@pytest.mark.parametrize("path", sorted(profiles.SHIPPED_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_value_cites_why(path):
    """Each key in a section sits under a comment (shared by a run of keys) or carries one inline."""
    lines = path.read_text().splitlines()
    section = None
    for i, line in enumerate(lines):
        if re.match(r"^\w+:", line):
            section = line.split(":")[0]
            continue
        if section not in profiles.SECTIONS or not re.match(r"^  [\w.\-]+:", line) or "#" in line:
            continue
        j = i - 1
        while j >= 0 and re.match(r"^  [\w.\-]+:", lines[j]):
            j -= 1
        assert lines[j].strip().startswith("#"), f"{path.name}:{i + 1}: {line.strip()!r} has no comment saying why"


def write(tmp_path, name, body):
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(body))
    return path


def test_extends_chain_merges_child_over_parents(tmp_path, plugins):
    write(tmp_path, "parent", """
        description: parent
        sysctl: {vm.swappiness: 30, net.core.somaxconn: 1024}
        env: {NCCL_IB_DISABLE: 1, NCCL_SOCKET_IFNAME: eth}
        ulimits: {nofile: 65536}
        checks: {numa_balancing: 0}
        nccl_conf: true
        """)
    write(tmp_path, "other", """
        sysctl: {vm.swappiness: 20}
        env: {HCCL_CONNECT_TIMEOUT: 600}
        """)
    child = write(tmp_path, "child", """
        description: child
        extends: [parent, other]
        sysctl: {net.core.somaxconn: 8192, vm.swappiness: null}
        env: {NCCL_IB_DISABLE: 0}
        ulimits: {nofile: {soft: 4096, hard: 65536}}
        """)
    prof = profiles.load(str(child), plugins)
    assert prof.chain == ["parent", "other", "child"] and prof.description == "child"
    assert prof.sysctl == {"net.core.somaxconn": "8192"}  # null removed the inherited swappiness
    assert prof.env == {"NCCL_IB_DISABLE": "0", "NCCL_SOCKET_IFNAME": "eth", "HCCL_CONNECT_TIMEOUT": "600"}
    assert prof.ulimits == {"nofile": ("4096", "65536")} and prof.checks == {"numa_balancing": "0"}
    assert prof.nccl_conf is True


def test_shipped_chain_inherits_base(plugins):
    prof = profiles.load("dcu-rocm", plugins)
    assert prof.chain == ["base", "dcu-rocm"]
    assert prof.sysctl["net.ipv4.tcp_rmem"] == ">=4096 131072 16777216"
    assert prof.checks["iommu"] == "pt" and prof.env["HSA_FORCE_FINE_GRAIN_PCIE"] == "1"


def test_extends_cycle_is_reported(tmp_path, plugins):
    write(tmp_path, "a", "extends: b\n")
    write(tmp_path, "b", "extends: c\n")
    write(tmp_path, "c", "extends: a\n")
    with pytest.raises(ProfileError, match="extends cycle a -> b -> c -> a"):
        profiles.load(str(tmp_path / "a.yaml"), plugins)


BAD = [
    ("sysctls: {vm.swappiness: 10}", ["unknown key 'sysctls'", "allowed keys"]),
    ("sysctl: {kernel.panic: 1}", ["sysctl.kernel.panic", "not in the allowlist", "vm.swappiness"]),
    ("sysctl: {kernel.numa_balancing: 0}", ["belongs under checks.numa_balancing"]),
    ("sysctl: {net.ipv4.tcp_rmem: '4096 131072'}", ["sysctl.net.ipv4.tcp_rmem", "has 2 number(s)"]),
    ("sysctl: {net.ipv4.tcp_rmem: '16777216 4096 131072'}", ["non-decreasing"]),
    ("sysctl: {net.ipv4.tcp_keepalive_probes: 500}", ["tcp_keepalive_probes", "out of range", "[1, 127]"]),
    ("sysctl: {vm.swappiness: ten}", ["vm.swappiness", "'ten' is not an integer"]),
    ("sysctl: {net.core.default_qdisc: '>=fq'}", ["default_qdisc", "is not one of"]),
    ("sysctl: {net.core.somaxconn: '>=-5'}", ["somaxconn", "-5 is out of range"]),
    ("env: {LD_PRELOAD: /tmp/x.so}", ["env.LD_PRELOAD", "not allowed", "NCCL_"]),
    ("env: {NCCL_IB_DISABLE: yes}", ["env.NCCL_IB_DISABLE", "booleans"]),
    ("env: {NCCL_IB_TIMEOUT: 40}", ["env.NCCL_IB_TIMEOUT", "out of range", "[1, 31]"]),
    ("env: {NCCL_NET_GDR_LEVEL: NEAR}", ["NCCL_NET_GDR_LEVEL", "one of LOC, PIX, PXB, PHB, SYS"]),
    ("env: {NCCL_DEBUG: INFO}", ["env.NCCL_DEBUG", "one of VERSION, WARN"]),
    ("env: {NCCL_SOCKET_NTHREADS: 16, NCCL_NSOCKS_PERTHREAD: 8}", ["16 x 8 = 128", "at most 64"]),
    ("ulimits: {nofile: unlimited}", ["ulimits.nofile", "cannot be unlimited"]),
    ("ulimits: {nofile: 2000000}", ["nofile hard limit 2000000 exceeds fs.nr_open 1048576"]),
    ("ulimits: {memlock: {soft: unlimited, hard: 1024}}", ["soft limit unlimited is above hard limit 1024"]),
    ("ulimits: {stack: 8192}", ["unknown ulimit item 'stack'", "memlock, nofile, nproc"]),
    ("checks: {selinux: 0}", ["unknown check 'selinux'", "numa_balancing"]),
    ("checks: {iommu: 'on'}", ["checks.iommu", "one of pt"]),
    ("extends: nosuch", ["extends 'nosuch'", "not a known profile", "base"]),
    ("sysctl: [vm.swappiness]", ["sysctl", "expected a mapping"]),
    ("sysctl: {vm.swappiness: 10", ["not valid YAML"]),
    ("sysctl:\n  vm.swappiness: 10\n  vm.swappiness: 60", ["line 3: key 'vm.swappiness' appears twice"]),
]


@pytest.mark.parametrize("body,fragments", BAD, ids=[b for b, _ in BAD])
def test_bad_profile_is_refused_naming_file_and_key(tmp_path, plugins, body, fragments):
    path = write(tmp_path, "bad", body + "\n")
    with pytest.raises(ProfileError) as err:
        profiles.load(str(path), plugins)
    message = str(err.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message


def test_unknown_profile_name_lists_the_known_ones(plugins):
    with pytest.raises(ProfileError, match="unknown tuning profile 'dgx'; available: ascend, base"):
        profiles.load("dgx", plugins)


class VendorPlugin:
    def __init__(self, paths):
        self.paths = paths

    @portkit.hookimpl
    def portkit_tuning_profiles(self):
        return self.paths


def test_plugin_contributes_a_profile_that_extends_a_shipped_one(tmp_path, monkeypatch):
    mlu = write(tmp_path, "mlu-cluster", """
        description: Cambricon MLU cluster
        extends: ethernet
        env: {CNCL_SOCKET_IFNAME: eth0}
        """)
    (tmp_path / "vendor").mkdir()
    clash = write(tmp_path / "vendor", "base", "description: a second base\n")
    monkeypatch.setenv("PORTKIT_PLUGINS", "cpu")
    plugins = discover(extra=[("vendorx", VendorPlugin([str(mlu), str(clash), str(tmp_path / "gone.yaml")]))])
    known = profiles.registry(plugins)
    assert known["mlu-cluster"] == mlu and known["base"] == profiles.SHIPPED_DIR / "base.yaml"
    prof = profiles.load("mlu-cluster", known=known)
    assert prof.chain == ["base", "ethernet", "mlu-cluster"] and prof.env["CNCL_SOCKET_IFNAME"] == "eth0"
    reasons = [e.reason for e in plugins.errors if e.plugin == "vendorx"]
    assert any("'base'" in r and "already provided by 'portkit'" in r for r in reasons)
    assert any("gone.yaml is not an existing .yaml file" in r for r in reasons)


def test_launch_env_is_the_merged_environment(fresh_runtime, monkeypatch):
    monkeypatch.setenv("PORTKIT_PLUGINS", "cpu")
    env = launch_env("dcu-rocm")
    assert env["HSA_FORCE_FINE_GRAIN_PCIE"] == "1" and env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "3"
    assert all(isinstance(v, str) for v in env.values())
    with pytest.raises(ProfileError, match="unknown tuning profile"):
        launch_env("nonexistent")
