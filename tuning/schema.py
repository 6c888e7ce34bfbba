"""What a tuning profile may set, as data: the sysctl allowlist, the ulimit items, the
read-only checks and the communication-library environment, each with its type and range.

A value is checked here once, when its profile is loaded, and turned into the exact text
the engine writes and compares. Anything not in these tables is an error that names the
file, the key and what is allowed instead.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from portkit.errors import UserError

INT_MAX = 2**31 - 1
LONG_MAX = 2**63 - 1


AT_LEAST = ">="  # sysctl value prefix: raise to at least this, never lower a larger value


class ProfileError(UserError, ValueError):
    """A profile that cannot be used; the message names the file, the key and the fix."""


@dataclass(frozen=True)
class Spec:
    """The type of one key: 'int' (lo..hi), 'ints' (count integers, each lo..hi, optionally
    non-decreasing), 'enum' (one of choices) or 'pattern' (a string matching regex)."""
    kind: str
    lo: int = 0
    hi: int = INT_MAX
    count: int = 1
    ordered: bool = False
    choices: tuple = ()
    regex: str = ""
    example: str = ""

    def describe(self) -> str:
        if self.kind == "int":
            return f"an integer in [{self.lo}, {self.hi}] (a '>=' prefix only raises)"
        if self.kind == "ints":
            order = ", non-decreasing" if self.ordered else ""
            return (f"{self.count} integers in [{self.lo}, {self.hi}]{order}, e.g. {self.example!r} "
                    f"(a '>=' prefix only raises)")
        if self.kind == "enum":
            return "one of " + ", ".join(map(str, self.choices))
        return f"a string like {self.example!r}"


def Int(lo: int = 0, hi: int = INT_MAX) -> Spec:
    return Spec("int", lo=lo, hi=hi)


def Ints(count: int, lo: int, hi: int, example: str, ordered: bool = True) -> Spec:
    return Spec("ints", lo=lo, hi=hi, count=count, ordered=ordered, example=example)


def Enum(*choices: Any) -> Spec:
    return Spec("enum", choices=tuple(choices))


def Pattern(regex: str, example: str) -> Spec:
    return Spec("pattern", regex=regex, example=example)


# NCCL/HCCL interface and HCA lists: optional '^' (exclude) and '=' (exact), comma-separated
# names with an optional ':port' (NCCL env docs, NCCL_SOCKET_IFNAME / NCCL_IB_HCA).
IFLIST = Pattern(r"\^?=?[A-Za-z0-9_.@-]+(:[0-9]+)?(,[A-Za-z0-9_.@-]+(:[0-9]+)?)*", "^docker,lo")
BOOL01 = Enum(0, 1)

# -- sysctl allowlist: key -> type. Ranges are the kernel's own limits where it has them. --
SYSCTL: dict[str, Spec] = {
    # network buffers
    "net.core.rmem_max": Int(4096), "net.core.wmem_max": Int(4096),
    "net.core.rmem_default": Int(4096), "net.core.wmem_default": Int(4096),
    "net.core.optmem_max": Int(0),
    "net.ipv4.tcp_rmem": Ints(3, 1, INT_MAX, "4096 131072 16777216"),
    "net.ipv4.tcp_wmem": Ints(3, 1, INT_MAX, "4096 16384 16777216"),
    "net.ipv4.tcp_mem": Ints(3, 1, LONG_MAX, "1538757 2051676 3077514"),
    "net.ipv4.udp_mem": Ints(3, 1, LONG_MAX, "3145728 4194304 16777216"),
    "net.ipv4.udp_rmem_min": Int(1), "net.ipv4.udp_wmem_min": Int(1),
    "net.ipv4.tcp_mtu_probing": Enum(0, 1, 2),
    "net.ipv4.tcp_congestion_control": Pattern(r"[a-z0-9_]+", "cubic"),
    "net.core.default_qdisc": Enum("pfifo_fast", "fq", "fq_codel", "sfq", "cake", "noqueue"),
    "net.core.busy_read": Int(0), "net.core.busy_poll": Int(0),
    # backlogs
    "net.core.somaxconn": Int(1), "net.core.netdev_max_backlog": Int(1),
    "net.core.netdev_budget": Int(1), "net.ipv4.tcp_max_syn_backlog": Int(1),
    # keepalive and dead-peer detection (kernel MAX_TCP_KEEPIDLE/KEEPINTVL 32767, KEEPCNT 127)
    "net.ipv4.tcp_keepalive_time": Int(1, 32767), "net.ipv4.tcp_keepalive_intvl": Int(1, 32767),
    "net.ipv4.tcp_keepalive_probes": Int(1, 127), "net.ipv4.tcp_retries2": Int(1, 255),
    "net.ipv4.tcp_syn_retries": Int(1, 127), "net.ipv4.tcp_synack_retries": Int(1, 255),
    # connections and ports
    "net.ipv4.ip_local_port_range": Ints(2, 1, 65535, "10000 65535"),
    "net.ipv4.ip_local_reserved_ports": Pattern(r"[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*", "29400,29500-29510"),
    "net.ipv4.tcp_fin_timeout": Int(1, 120), "net.ipv4.tcp_tw_reuse": Enum(0, 1, 2),
    "net.ipv4.tcp_max_tw_buckets": Int(0), "net.ipv4.tcp_slow_start_after_idle": BOOL01,
    "net.ipv4.tcp_timestamps": Enum(0, 1, 2), "net.ipv4.tcp_sack": BOOL01,
    "net.ipv4.tcp_window_scaling": BOOL01, "net.ipv4.tcp_no_metrics_save": BOOL01,
    "net.ipv4.tcp_fastopen": Int(0, 4095),
    # neighbour tables: one entry per peer address, thousands on a large flat subnet
    **{f"net.ipv{v}.neigh.default.gc_thresh{i}": Int(0) for v in (4, 6) for i in (1, 2, 3)},
    # multi-rail hosts with several NICs on one subnet (ARP flux)
    **{f"net.ipv4.conf.{d}.{k}": s for d in ("all", "default") for k, s in
       (("arp_ignore", Enum(*range(9))), ("arp_announce", Enum(0, 1, 2)), ("rp_filter", Enum(0, 1, 2)))},
    # file handles
    "fs.file-max": Int(1024, LONG_MAX), "fs.nr_open": Int(1024, 2147483584),
    "fs.inotify.max_user_watches": Int(1), "fs.inotify.max_user_instances": Int(1),
    "fs.aio-max-nr": Int(1, LONG_MAX),
    # memory
    "vm.swappiness": Int(0, 200), "vm.min_free_kbytes": Int(0), "vm.zone_reclaim_mode": Int(0, 7),
    "vm.max_map_count": Int(1), "vm.overcommit_memory": Enum(0, 1, 2),
    "vm.dirty_ratio": Int(0, 100), "vm.dirty_background_ratio": Int(0, 100),
    # processes and threads (kernel PID_MAX_LIMIT 4194304, FUTEX_TID_MASK)
    "kernel.pid_max": Int(301, 4194304), "kernel.threads-max": Int(20, 0x3FFFFFFF),
}

# Keys that look like sysctls but belong elsewhere: the error says where.
SYSCTL_ELSEWHERE = {"kernel.numa_balancing": "checks.numa_balancing (it is verified, not set)"}

# -- ulimits: item -> (type of one value, whether 'unlimited' is allowed). Units as limits.conf.
ULIMITS: dict[str, tuple[Spec, bool]] = {
    "memlock": (Int(0, LONG_MAX), True),     # KB of locked memory; RDMA pins buffers
    "nofile": (Int(1024, 2147483584), False),  # open files; capped by fs.nr_open, never unlimited
    "nproc": (Int(1, 4194304), True),         # processes and threads per user
}

# -- checks: verified, never changed by apply --
CHECKS: dict[str, Spec] = {
    "numa_balancing": BOOL01,                                  # /proc/sys/kernel/numa_balancing
    "iommu": Enum("pt"),                                       # 'iommu=pt' on /proc/cmdline
    "transparent_hugepage": Enum("always", "madvise", "never"),  # [selected] in .../enabled
    "cpu_governor": Enum("performance", "powersave", "ondemand", "schedutil", "conservative", "userspace"),
}

# -- communication-library environment --
ENV_PREFIXES = ("NCCL_", "RCCL_", "HSA_", "HCCL_", "ASCEND_", "CNCL_", "GLOO_", "UCX_", "TORCH_NCCL_")
ENV: dict[str, Spec] = {
    # NCCL env docs ("System configuration")
    "NCCL_SOCKET_IFNAME": IFLIST, "NCCL_IB_HCA": IFLIST,
    "NCCL_IB_TIMEOUT": Int(1, 31), "NCCL_IB_RETRY_CNT": Int(0, 7), "NCCL_IB_GID_INDEX": Int(-1, 255),
    "NCCL_IB_DISABLE": BOOL01, "NCCL_IB_SL": Int(0, 15), "NCCL_IB_TC": Int(0, 255),
    "NCCL_NET_GDR_LEVEL": Enum("LOC", "PIX", "PXB", "PHB", "SYS"), "NCCL_NET_GDR_READ": BOOL01,
    "NCCL_CROSS_NIC": Enum(0, 1, 2), "NCCL_SOCKET_NTHREADS": Int(1, 16),
    "NCCL_NSOCKS_PERTHREAD": Int(1, 64), "NCCL_IB_ADAPTIVE_ROUTING": BOOL01,
    # INFO and TRACE are debugging levels NCCL says not to keep in production settings.
    "NCCL_DEBUG": Enum("VERSION", "WARN"),
    # ROCm runtime (RCCL warns at init when it is not 1)
    "HSA_FORCE_FINE_GRAIN_PCIE": BOOL01,
    # Ascend HCCL (CANN environment variable reference)
    "HCCL_CONNECT_TIMEOUT": Int(120, 7200), "HCCL_EXEC_TIMEOUT": Int(0, INT_MAX),
    "HCCL_RDMA_TIMEOUT": Int(5, 24), "HCCL_RDMA_RETRY_CNT": Int(1, 7), "HCCL_BUFFSIZE": Int(1),
    "HCCL_SOCKET_IFNAME": IFLIST,
    # PyTorch ProcessGroupNCCL
    "TORCH_NCCL_ASYNC_ERROR_HANDLING": Enum(0, 1, 2, 3), "TORCH_NCCL_BLOCKING_WAIT": BOOL01,
}
ENV_NAME = re.compile(r"[A-Z][A-Z0-9_]*")


def normalize(spec: Spec, value: Any, where: str) -> str:
    """The canonical text of `value` for `spec`, or ProfileError naming `where`."""
    if isinstance(value, bool) or value is None or isinstance(value, (list, dict, float)):
        raise ProfileError(f"{where}: {value!r} is not valid; expected {spec.describe()}"
                           + (" (YAML reads yes/no/on/off as booleans: write 0 or 1)" if isinstance(value, bool) else ""))
    text = str(value).strip()
    if text.startswith(AT_LEAST) and spec.kind in ("int", "ints"):
        return AT_LEAST + normalize(spec, text[len(AT_LEAST):], where)
    if spec.kind == "int":
        return str(_int(text, spec, where))
    if spec.kind == "ints":
        return _ints(text, spec, where)
    if spec.kind == "enum":
        if text not in {str(c) for c in spec.choices}:
            raise ProfileError(f"{where}: {value!r} is not {spec.describe()}")
        return text
    if not re.fullmatch(spec.regex, text):
        raise ProfileError(f"{where}: {value!r} is not {spec.describe()}")
    return text


def _int(text: str, spec: Spec, where: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise ProfileError(f"{where}: {text!r} is not {spec.describe()}") from None
    if not spec.lo <= n <= spec.hi:
        raise ProfileError(f"{where}: {n} is out of range; expected {spec.describe()}")
    return n


def _ints(text: str, spec: Spec, where: str) -> str:
    parts = text.split()
    if len(parts) != spec.count:
        raise ProfileError(f"{where}: {text!r} has {len(parts)} number(s); expected {spec.describe()}")
    nums = [_int(p, spec, where) for p in parts]
    if spec.ordered and nums != sorted(nums):
        raise ProfileError(f"{where}: {text!r} must be non-decreasing (min default max); expected {spec.describe()}")
    return " ".join(map(str, nums))


def sysctl_value(key: str, value: Any, where: str) -> str:
    if key in SYSCTL_ELSEWHERE:
        raise ProfileError(f"{where}: {key!r} belongs under {SYSCTL_ELSEWHERE[key]}")
    if key not in SYSCTL:
        raise ProfileError(f"{where}: sysctl key {key!r} is not in the allowlist; allowed: {', '.join(sorted(SYSCTL))}")
    return normalize(SYSCTL[key], value, f"{where}")


def env_value(key: str, value: Any, where: str) -> str:
    if not ENV_NAME.fullmatch(key) or not key.startswith(ENV_PREFIXES):
        raise ProfileError(f"{where}: environment variable {key!r} is not allowed; names must start with one of "
                           f"{', '.join(ENV_PREFIXES)}")
    if key in ENV:
        return normalize(ENV[key], value, where)
    if isinstance(value, bool) or not isinstance(value, (str, int)) or "\n" in str(value):
        raise ProfileError(f"{where}: {value!r} is not a single-line string or integer"
                           + (" (YAML reads yes/no/on/off as booleans: quote the value)" if isinstance(value, bool) else ""))
    return str(value)


def check_value(key: str, value: Any, where: str) -> str:
    if key not in CHECKS:
        raise ProfileError(f"{where}: unknown check {key!r}; allowed: {', '.join(CHECKS)}")
    return normalize(CHECKS[key], value, where)


def ulimit_value(item: str, value: Any, where: str) -> tuple[str, str]:
    """(soft, hard) from a scalar (both) or a {soft, hard} mapping."""
    if item not in ULIMITS:
        raise ProfileError(f"{where}: unknown ulimit item {item!r}; allowed: {', '.join(ULIMITS)}")
    if isinstance(value, dict):
        extra = sorted(set(value) - {"soft", "hard"})
        if extra or set(value) != {"soft", "hard"}:
            raise ProfileError(f"{where}: a mapping needs exactly the keys soft and hard, got {sorted(value)}")
        soft, hard = (_limit(item, value[k], f"{where}.{k}") for k in ("soft", "hard"))
    else:
        soft = hard = _limit(item, value, where)
    if limit_number(soft) > limit_number(hard):
        raise ProfileError(f"{where}: soft limit {soft} is above hard limit {hard}")
    return soft, hard


def _limit(item: str, value: Any, where: str) -> str:
    spec, unlimited_ok = ULIMITS[item]
    if value in ("unlimited", "infinity", -1):
        if not unlimited_ok:
            raise ProfileError(f"{where}: {item} cannot be unlimited (the kernel caps it at fs.nr_open); "
                               f"expected {spec.describe()}")
        return "unlimited"
    return normalize(spec, value, where)


def limit_number(text: str) -> float:
    return float("inf") if text in ("unlimited", "infinity", "-1") else int(text)


def satisfied(current: str | None, wanted: str) -> bool:
    """Whether a kernel value meets `wanted`: equal tokens, or for '>=' every number at least
    the wanted one (so a node already tuned higher is left alone, as tuned's '>' does)."""
    if not wanted.startswith(AT_LEAST):
        return same(current, wanted)
    floor = wanted[len(AT_LEAST):].split()
    now = (current or "").split()
    if len(now) != len(floor) or not all(t.lstrip("-").isdigit() for t in now):
        return False
    return all(int(c) >= int(f) for c, f in zip(now, floor))


def target(current: str | None, wanted: str) -> str:
    """The text to write: `wanted`, or for '>=' each number raised to its floor only where below."""
    if not wanted.startswith(AT_LEAST):
        return wanted
    floor = wanted[len(AT_LEAST):].split()
    now = (current or "").split()
    if len(now) != len(floor) or not all(t.lstrip("-").isdigit() for t in now):
        return " ".join(floor)
    return " ".join(str(max(int(c), int(f))) for c, f in zip(now, floor))


def same(a: str | None, b: str | None) -> bool:
    """Kernel and file values compare by their whitespace-separated tokens ("4096\\t131072" == "4096 131072")."""
    if a is None or b is None:
        return a is b
    return a.split() == b.split()
