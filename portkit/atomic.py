"""The one way portkit writes a file: a temporary file beside it, fsync, rename, fsync of the
directory. The rename is the commit (as in torch.distributed.checkpoint): a kill at any
moment leaves either the old file or the new one, never a torn or empty one."""
from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO, Callable

from portkit import faults


def write(path: str | Path, data: bytes | str | Callable[[BinaryIO], None],
          before_rename: Callable[[Path], None] | None = None) -> Path:
    """Write `data` (bytes, text, or a function writing to a binary file such as torch.save
    or savefig) to `path` atomically. `before_rename(tmp)` may set mode or owner, or raise."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        if before_rename is not None:
            before_rename(tmp)
        faults.point(f"rename:{path.name}")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    fsync_dir(path.parent)
    return path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
