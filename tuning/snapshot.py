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

VERSION = 1


@dataclass
class Write:
    """One file the engine writes. `direct`: written in place (kernel files under /proc/sys
    cannot be renamed over); otherwise a temporary file, fsync and rename."""
    path: Path
    data: bytes
    direct: bool


def atomic_write(path: Path, data: bytes, mode: int | None = None, owner: tuple[int, int] | None = None,
                 fault: str | None = None) -> None:
    """Write `data` to a temporary file beside `path`, fsync it, then rename it over `path`."""
    tmp = path.with_name(f".{path.name}.portkit-tmp-{os.getpid()}")
    old = path.stat() if path.exists() else None
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode if mode is not None else (old.st_mode & 0o7777 if old else 0o644))
        uid, gid = owner if owner else ((old.st_uid, old.st_gid) if old else (os.getuid(), os.getgid()))
        if (uid, gid) != (os.getuid(), os.getgid()):
            os.chown(tmp, uid, gid)
        if fault:
            raise OSError(errno.EIO, fault, str(path))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)


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


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
    try:
        doc = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ValueError(f"snapshot {path} does not exist") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"snapshot {path} is not valid JSON ({e}); it may be truncated") from None
    if not isinstance(doc, dict) or doc.get("version") != VERSION or not isinstance(doc.get("files"), list):
        raise ValueError(f"snapshot {path} is not a portkit tuning snapshot (version {VERSION})")
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
            _restore_one(root / entry["path"], entry)
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
