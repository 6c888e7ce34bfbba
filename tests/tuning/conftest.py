"""A fake node root: proc/sys, sys, etc with the values a stock distribution kernel shows."""
import hashlib
import os
from pathlib import Path

import pytest

# Untuned values as read on a stock Ubuntu 22.04 / RHEL 9 node (tabs as the kernel prints them).
SYSCTL = {
    "net/core/rmem_max": "212992", "net/core/wmem_max": "212992",
    "net/core/netdev_max_backlog": "1000", "net/core/somaxconn": "4096",
    "net/ipv4/tcp_rmem": "4096\t131072\t6291456", "net/ipv4/tcp_wmem": "4096\t16384\t4194304",
    "net/ipv4/tcp_mtu_probing": "0", "net/ipv4/tcp_slow_start_after_idle": "1",
    "net/ipv4/tcp_max_syn_backlog": "4096", "net/ipv4/tcp_keepalive_time": "7200",
    "net/ipv4/tcp_keepalive_intvl": "75", "net/ipv4/tcp_keepalive_probes": "9",
    "net/ipv4/ip_local_port_range": "32768\t60999", "net/ipv4/ip_local_reserved_ports": "",
    "net/ipv4/neigh/default/gc_thresh1": "128", "net/ipv4/neigh/default/gc_thresh2": "512",
    "net/ipv4/neigh/default/gc_thresh3": "1024", "fs/nr_open": "1048576",
    "vm/swappiness": "60", "vm/min_free_kbytes": "67584", "kernel/pid_max": "4194304",
    "kernel/numa_balancing": "0",
}
LIMITS_CONF = """# /etc/security/limits.conf
#
#<domain>      <type>  <item>         <value>
*               soft    nofile          1024
*               hard    nofile          4096
# End of file
"""


def write(root: Path, rel: str, text: str, mode: int = 0o644) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


@pytest.fixture
def node(tmp_path) -> Path:
    root = tmp_path / "node"
    for key, value in SYSCTL.items():
        write(root, f"proc/sys/{key}", value + "\n")
    write(root, "proc/cmdline", "BOOT_IMAGE=/vmlinuz-6.8.0-45-generic root=/dev/nvme0n1p2 ro quiet splash\n", 0o444)
    write(root, "sys/kernel/mm/transparent_hugepage/enabled", "always [madvise] never\n")
    for cpu in range(4):
        write(root, f"sys/devices/system/cpu/cpu{cpu}/cpufreq/scaling_governor", "powersave\n")
    write(root, "etc/security/limits.conf", LIMITS_CONF)
    write(root, "etc/security/limits.d/20-nproc.conf", "*          soft    nproc     4096\nroot       soft    nproc     unlimited\n")
    write(root, "etc/nccl.conf", "# site settings\nNCCL_DEBUG=WARN\n", 0o640)
    return root


def digest(root: Path, skip: str | None = None) -> dict[str, tuple]:
    """Every file and directory under root: content hash and mode (dirs: mode only)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if skip and rel.startswith(skip):
                continue
            st = path.stat()
            data = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
            out[rel] = (data, st.st_mode)
    return out


@pytest.fixture
def tree():
    """tree(root, skip=None) -> {relative path: (sha256 or 'dir', mode)}."""
    return digest


@pytest.fixture
def plugins(monkeypatch):
    """A plugin set with only the cpu backend entry point, so tests see shipped profiles alone."""
    from portkit.plugins import discover
    monkeypatch.setenv("PORTKIT_PLUGINS", "cpu")
    return discover()
