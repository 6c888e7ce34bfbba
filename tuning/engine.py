"""The tuning engine: plan (current -> wanted), apply (preflight, snapshot, write, restore on
the first failure, verify), verify and rollback, all against a root directory.

Where each kind of key lives under ROOT:
    sysctl   proc/sys/<key with dots as slashes>           written in place
    ulimit   etc/security/limits.d/99-portkit.conf          one managed file, current value
             read from limits.conf and limits.d/*.conf (domain '*', the last entry wins)
    nccl     etc/nccl.conf (NCCL_* env keys, when the profile sets nccl_conf: true)
    check    proc/sys/kernel/numa_balancing, proc/cmdline, sys/kernel/mm/transparent_hugepage/
             enabled, sys/devices/system/cpu/cpu*/cpufreq/scaling_governor: only read
    env      nothing on disk: exported into launched jobs (action 'launch')

Fault injection for tests: apply(fail_at=N), or PORTKIT_TUNE_FAIL_AT=N for the CLI, makes
the Nth file write fail halfway through, as a full disk or a kernel refusal would.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from portkit.errors import contained
from portkit.tuning import schema, snapshot
from portkit.tuning.profiles import Profile
from portkit.tuning.snapshot import Write

LIMITS_FILE = "etc/security/limits.d/99-portkit.conf"
NCCL_CONF = "etc/nccl.conf"
SNAPSHOT_DIR = "var/lib/portkit/tuning/snapshots"
FAIL_ENV = "PORTKIT_TUNE_FAIL_AT"


class TuneError(RuntimeError):
    """apply/rollback stopped; the message says what was (not) changed and what to do."""


@dataclass
class Change:
    kind: str              # sysctl | ulimit | nccl.conf | check | env
    key: str
    path: str              # the file read (and written), '' for launch environment
    current: str | None    # None: absent / unset
    wanted: str
    action: str            # set | unchanged | verify-only | launch
    ok: bool               # current already satisfies wanted


@dataclass
class ApplyResult:
    snapshot: Path | None
    written: list[Path]
    mismatches: list[Change] = field(default_factory=list)


# -- reading the current state ----------------------------------------------------------
def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise TuneError(f"cannot read {path}: {e.strerror or e}") from None


def sysctl_path(root: Path, key: str) -> Path:
    return contained(root, Path("proc/sys") / key.replace(".", "/"), key=f"sysctl {key}")


def _row(kind: str, key: str, path: Path | str, current: str | None, wanted: str, ok: bool) -> Change:
    action = "unchanged" if ok else "set"
    return Change(kind, key, str(path), current, wanted, action, ok)


def _sysctl_changes(profile: Profile, root: Path) -> list[Change]:
    rows = []
    for key, wanted in profile.sysctl.items():
        path = sysctl_path(root, key)
        text = _read(path)
        current = " ".join(text.split()) if text is not None else None
        rows.append(_row("sysctl", key, path, current, wanted, schema.satisfied(current, wanted)))
    return rows


def limits_in_force(root: Path) -> dict[str, tuple[str | None, str | None]]:
    """item -> (soft, hard) for domain '*', from limits.conf then limits.d/*.conf in order."""
    files = [root / "etc/security/limits.conf", *sorted((root / "etc/security/limits.d").glob("*.conf"))]
    soft: dict[str, str] = {}
    hard: dict[str, str] = {}
    for f in files:
        for line in (_read(f) or "").splitlines():
            fields = line.split("#", 1)[0].split()
            if len(fields) != 4 or fields[0] != "*":
                continue
            _, typ, item, value = fields
            value = "unlimited" if value in ("infinity", "-1") else value
            if typ in ("soft", "-"):
                soft[item] = value
            if typ in ("hard", "-"):
                hard[item] = value
    return {item: (soft.get(item), hard.get(item)) for item in set(soft) | set(hard)}


def _fmt_limit(soft: str | None, hard: str | None) -> str | None:
    if soft is None and hard is None:
        return None
    return soft if soft == hard else f"{soft or '-'}/{hard or '-'} (soft/hard)"


def _ulimit_changes(profile: Profile, root: Path) -> list[Change]:
    now = limits_in_force(root)
    rows = []
    for item, (soft, hard) in profile.ulimits.items():
        cur = now.get(item, (None, None))
        rows.append(_row("ulimit", item, root / LIMITS_FILE, _fmt_limit(*cur), _fmt_limit(soft, hard),
                         cur == (soft, hard)))
    return rows


def nccl_conf_entries(text: str | None) -> dict[str, str]:
    out = {}
    for line in (text or "").splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            out[key.strip()] = value.strip()
    return out


def nccl_keys(profile: Profile) -> dict[str, str]:
    return {k: v for k, v in profile.env.items() if k.startswith("NCCL_")} if profile.nccl_conf else {}


def _env_changes(profile: Profile, root: Path) -> list[Change]:
    in_conf = nccl_keys(profile)
    current = nccl_conf_entries(_read(root / NCCL_CONF)) if in_conf else {}
    rows = []
    for key, wanted in profile.env.items():
        if key in in_conf:
            rows.append(_row("nccl.conf", key, root / NCCL_CONF, current.get(key), wanted,
                             current.get(key) == wanted))
        else:
            rows.append(Change("env", key, "", None, wanted, "launch", True))
    return rows


# -- checks (read-only) -----------------------------------------------------------------
def _check_numa(root: Path, wanted: str) -> tuple[str, str | None, bool]:
    path = root / "proc/sys/kernel/numa_balancing"
    text = _read(path)
    current = text.strip() if text is not None else None
    # No file: the kernel was built without automatic NUMA balancing, i.e. it is off.
    return str(path), current, current == wanted or (current is None and wanted == "0")


def _check_iommu(root: Path, wanted: str) -> tuple[str, str | None, bool]:
    path = root / "proc/cmdline"
    tokens = (_read(path) or "").split()
    found = [t for t in tokens if re.fullmatch(r"(\w+_)?iommu=\S+", t)]
    return str(path), " ".join(found) or None, f"iommu={wanted}" in tokens


def _check_thp(root: Path, wanted: str) -> tuple[str, str | None, bool]:
    path = root / "sys/kernel/mm/transparent_hugepage/enabled"
    m = re.search(r"\[(\w+)\]", _read(path) or "")
    current = m.group(1) if m else None
    return str(path), current, current == wanted


def _check_governor(root: Path, wanted: str) -> tuple[str, str | None, bool]:
    pattern = "sys/devices/system/cpu/cpu*/cpufreq/scaling_governor"
    values = sorted({(_read(p) or "").strip() for p in root.glob(pattern)})
    current = ",".join(values) or None
    return str(root / pattern), current, values == [wanted]


CHECKERS = {"numa_balancing": _check_numa, "iommu": _check_iommu,
            "transparent_hugepage": _check_thp, "cpu_governor": _check_governor}


def _check_changes(profile: Profile, root: Path) -> list[Change]:
    rows = []
    for key, wanted in profile.checks.items():
        path, current, ok = CHECKERS[key](root, wanted)
        rows.append(Change("check", key, path, current, wanted, "verify-only", ok))
    return rows


def plan(profile: Profile, root: Path | str = "/") -> list[Change]:
    """Every key of the profile with its current value, wanted value and action."""
    root = Path(root)
    return [*_sysctl_changes(profile, root), *_ulimit_changes(profile, root),
            *_env_changes(profile, root), *_check_changes(profile, root)]


def verify(profile: Profile, root: Path | str = "/") -> list[Change]:
    """The keys not in the wanted state (settings and checks); empty when all hold."""
    return [c for c in plan(profile, root) if not c.ok]


# -- what apply writes ------------------------------------------------------------------
def render_limits(profile: Profile) -> str:
    lines = [f"# portkit tuning profile {profile.name} ({' -> '.join(profile.chain)}): written by "
             f"`portkit tune apply`, undone by `portkit tune rollback SNAPSHOT`.",
             "# pam_limits does not apply the '*' domain to root, hence the root lines."]
    for domain in ("*", "root"):
        for item, (soft, hard) in profile.ulimits.items():
            lines += [f"{domain:<5} soft  {item:<8} {soft}", f"{domain:<5} hard  {item:<8} {hard}"]
    return "\n".join(lines) + "\n"


def render_nccl_conf(current: str | None, keys: dict[str, str]) -> str:
    """The existing file with our keys replaced in place and missing ones appended."""
    out, seen = [], set()
    for line in (current or "").splitlines():
        key = line.split("=", 1)[0].strip()
        if "=" in line and not line.lstrip().startswith("#") and key in keys:
            out.append(f"{key}={keys[key]}")
            seen.add(key)
        else:
            out.append(line)
    out += [f"{k}={v}" for k, v in keys.items() if k not in seen]
    return "\n".join(out) + "\n"


def planned_writes(profile: Profile, root: Path, changes: list[Change]) -> list[Write]:
    todo = {c.kind for c in changes if c.action == "set"}
    writes = [Write(Path(c.path), f"{schema.target(c.current, c.wanted)}\n".encode(), direct=True)
              for c in changes if c.kind == "sysctl" and c.action == "set"]
    if "ulimit" in todo:
        writes.append(Write(root / LIMITS_FILE, render_limits(profile).encode(), direct=False))
    if "nccl.conf" in todo:
        text = render_nccl_conf(_read(root / NCCL_CONF), nccl_keys(profile))
        writes.append(Write(root / NCCL_CONF, text.encode(), direct=False))
    return writes


def preflight(writes: list[Write], snapshot_dir: Path | None) -> None:
    """Refuse, before touching anything, when any path cannot be written."""
    problems = [p for w in writes if (p := _cannot_write(w))]
    if snapshot_dir is not None:
        base = next(p for p in [snapshot_dir, *snapshot_dir.parents] if p.exists())
        if not base.is_dir() or not os.access(base, os.W_OK | os.X_OK):
            problems.append(f"{snapshot_dir}: cannot create the snapshot here ({base} is not a writable directory)")
    if problems:
        raise TuneError("refused, nothing was changed:\n  " + "\n  ".join(problems)
                        + "\nRun as a user who may write these files (usually root), or pass --root.")


def _cannot_write(w: Write) -> str | None:
    path, parent = w.path, w.path.parent
    if path.exists():
        if not path.is_file():
            return f"{path}: not a regular file"
        if not os.access(path, os.W_OK):
            return f"{path}: no permission to write"
        if w.direct:
            return None
    elif w.direct:
        return f"{path}: does not exist (this kernel has no such setting); remove the key from the profile"
    if not parent.is_dir():
        return f"{path}: parent {parent} is not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{path}: no permission to create files in {parent}"
    return None


def apply(profile: Profile, root: Path | str = "/", snapshot_dir: Path | str | None = None,
          fail_at: int | None = None) -> ApplyResult:
    """Preflight, snapshot, write each change; on the first failure restore everything and
    raise TuneError; then verify. The caller decides whether the user asked for this."""
    root = Path(root)
    snap_dir = Path(snapshot_dir) if snapshot_dir else root / SNAPSHOT_DIR
    writes = planned_writes(profile, root, plan(profile, root))
    if not writes:
        return ApplyResult(None, [], verify(profile, root))
    preflight(writes, snap_dir)
    created = _makedirs(snap_dir)
    try:
        snap = snapshot.take(root, writes, profile.name, snap_dir)
    except OSError as e:
        for d in reversed(created):
            d.rmdir()
        raise TuneError(f"cannot write the snapshot in {snap_dir}: {e.strerror or e}; nothing was changed") from None
    doc = snapshot.load(snap)
    for i, w in enumerate(writes, 1):
        try:
            snapshot.write(w, fault=f"injected write fault ({FAIL_ENV}={i})" if fail_at == i else None)
        except OSError as e:
            _undo(root, doc, writes[:i], snap, created, f"writing {w.path} failed: {e.strerror or e}")
    return ApplyResult(snap, [w.path for w in writes], verify(profile, root))


def _undo(root: Path, doc: dict, touched: list[Write], snap: Path, created: list[Path], why: str) -> None:
    errors = snapshot.restore(root, doc, only=[w.path for w in touched])
    if errors:
        raise TuneError(f"{why}. Restoring failed for:\n  " + "\n  ".join(errors)
                        + f"\nThe snapshot is kept: portkit tune rollback {snap} --root {root}")
    snap.unlink()
    for d in reversed(created):
        d.rmdir()
    raise TuneError(f"{why}. Restored the {len(touched)} file(s) touched; the system is as it was before.")


def _makedirs(path: Path) -> list[Path]:
    """mkdir -p that returns the directories it created, outermost first."""
    missing = [p for p in [path, *path.parents] if not p.exists()][::-1]
    for p in missing:
        p.mkdir()
    return missing


def rollback(snapshot_file: Path | str, root: Path | str = "/") -> list[str]:
    """Restore every file recorded in a snapshot; return the paths restored."""
    root = Path(root)
    doc = snapshot.load(Path(snapshot_file))  # a bad snapshot is a SnapshotError: exit 2, nothing touched
    if Path(doc["root"]) != root.resolve():
        raise snapshot.SnapshotError(f"taken under root {doc['root']}, not {root.resolve()}", file=snapshot_file,
                                     key="root", fix=f"pass --root {doc['root']}")
    preflight([_restore_write(root, e) for e in doc["files"]], None)
    errors = snapshot.restore(root, doc)
    if errors:
        raise TuneError("rollback failed for:\n  " + "\n  ".join(errors))
    return [str(root / e["path"]) for e in doc["files"]]


def _restore_write(root: Path, entry: dict) -> Write:
    # A file that did not exist is deleted: that needs the same rights as creating it.
    direct = entry["direct"] and entry["exists"]
    return Write(root / entry["path"], b"", direct=direct)
