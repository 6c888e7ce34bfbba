"""Snapshots of the files tuning may touch, and the writes that restore them byte for byte.

A snapshot is one JSON file: for every path, whether it existed, its bytes (base64), mode
and owner. It is written atomically (temporary file, fsync, rename: the renamed file is
the commit marker, as in torch.distributed.checkpoint). Restoring writes back the bytes
of files that existed and deletes files that did not.
"""
from __future__ import annotations

import base64
import errno
import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from portkit import atomic
from portkit.config import ConfigError, build
from portkit.errors import UserError, contained

VERSION = 1


class SnapshotError(UserError, ValueError):
    """A snapshot that cannot be restored from: the message names the file and the key."""


@dataclass(kw_only=True, slots=True)
class SnapshotFile:
    path: str              # relative to the root; must stay inside it
    exists: bool
    direct: bool
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    data: str = ""         # base64

    def __post_init__(self):
        if not 0 <= self.mode <= 0o7777:
            raise ValueError(f"mode must be in 0..0o7777, got {self.mode}")


@dataclass(kw_only=True, slots=True)
class SnapshotDoc:
    version: int
    profile: str
    root: str
    created: str
    files: list[SnapshotFile]


@dataclass
class Write:
    """One file the engine writes. `direct`: written in place (kernel files under /proc/sys
    cannot be renamed over); otherwise a temporary file, fsync and rename."""
    path: Path
    data: bytes
    direct: bool


def atomic_write(path: Path, data: bytes, mode: int | None = None, owner: tuple[int, int] | None = None,
                 fault: str | None = None) -> None:
    """portkit.atomic.write, keeping the file's mode and owner (or setting these)."""
    old = path.stat() if path.exists() else None

    def finish(tmp: Path) -> None:
        os.chmod(tmp, mode if mode is not None else (old.st_mode & 0o7777 if old else 0o644))
        uid, gid = owner if owner else ((old.st_uid, old.st_gid) if old else (os.getuid(), os.getgid()))
        if (uid, gid) != (os.getuid(), os.getgid()):
            os.chown(tmp, uid, gid)
        if fault:
            raise OSError(errno.EIO, fault, str(path))
    atomic.write(path, data, before_rename=finish)


def direct_write(path: Path, data: bytes, fault: str | None = None) -> None:
    """Write in place, as `sysctl -w` does. An injected fault stops after half the bytes."""
    with open(path, "wb") as f:
        if fault:
            f.write(data[: len(data) // 2])
            raise OSError(errno.EIO, fault, str(path))
        f.write(data)


def write(w: Write, fault: str | None = None) -> None:
    if w.direct:
        direct_write(w.path, w.data, fault)
    else:
        atomic_write(w.path, w.data, fault=fault)


def take(root: Path, writes: list[Write], profile: str, directory: Path) -> Path:
    """Record the current state of every path in `writes`; return the snapshot file."""
    files = [_entry(root, w) for w in writes]
    doc = {"version": VERSION, "profile": profile, "root": str(root.resolve()),
           "created": datetime.now(timezone.utc).isoformat(), "files": files}
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    path = directory / f"{stamp}.json"
    n = 1
    while path.exists():
        path, n = directory / f"{stamp}-{n}.json", n + 1
    atomic_write(path, json.dumps(doc, indent=1).encode(), mode=0o600)
    return path


def _entry(root: Path, w: Write) -> dict:
    rel = str(w.path.relative_to(root))
    if not w.path.exists():
        return {"path": rel, "exists": False, "direct": w.direct}
    st = w.path.stat()
    return {"path": rel, "exists": True, "direct": w.direct, "mode": st.st_mode & 0o7777,
            "uid": st.st_uid, "gid": st.st_gid, "data": base64.b64encode(w.path.read_bytes()).decode()}


def load(path: Path) -> dict:
    """The snapshot's JSON, validated: types, version, and every path inside its root."""
    try:
        doc = json.loads(Path(path).read_bytes())
    except FileNotFoundError:
        raise SnapshotError("does not exist", file=path, fix="give the snapshot file `tune apply` printed") from None
    except ValueError as e:
        raise SnapshotError(f"not valid JSON ({e}); it may be truncated", file=path,
                            fix="use another snapshot; this one cannot be restored from") from None
    try:
        checked = build(SnapshotDoc, doc, f"{path}: snapshot")
    except ConfigError as e:
        raise SnapshotError(f"{e}", fix=f"use a snapshot written by `portkit tune apply` (version {VERSION})") from None
    if checked.version != VERSION:
        raise SnapshotError(f"version {checked.version} is not {VERSION}", file=path, key="version", allowed=str(VERSION))
    for i, f in enumerate(checked.files):
        contained(checked.root, f.path, path, f"files[{i}].path")
        try:
            base64.b64decode(f.data, validate=True)
        except ValueError:
            raise SnapshotError("not base64", file=path, key=f"files[{i}].data") from None
    return doc


def restore(root: Path, doc: dict, only: list[Path] | None = None) -> list[str]:
    """Put back every file of the snapshot (or those in `only`); return the errors.

    Files already holding the recorded bytes are left alone, so restoring is idempotent and
    never needs to write a path that was not changed.
    """
    wanted = None if only is None else {str(p.relative_to(root)) for p in only}
    errors = []
    for entry in doc["files"]:
        if wanted is not None and entry["path"] not in wanted:
            continue
        try:
            _restore_one(contained(root, entry["path"], key="snapshot path"), entry)
        except OSError as e:
            errors.append(f"{root / entry['path']}: {e.strerror or e}")
    return errors


def _restore_one(path: Path, entry: dict) -> None:
    if not entry["exists"]:
        if path.exists() or path.is_symlink():
            path.unlink()
        return
    data = base64.b64decode(entry["data"])
    if path.is_file() and path.read_bytes() == data and (path.stat().st_mode & 0o7777) == entry["mode"]:
        return
    if entry["direct"]:
        direct_write(path, data)
    else:
        atomic_write(path, data, mode=entry["mode"], owner=(entry["uid"], entry["gid"]))
