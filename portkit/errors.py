"""Errors the user can fix, and the one path that reports them.

A UserError says which file and key are wrong, what is allowed and how to fix it. The CLI
prints it as one message and exits 2, without a traceback (`--debug` or PORTKIT_DEBUG=1
shows it). ConfigError, BackendError, CheckpointError, DataError, LaunchError, ProfileError
and the other input errors derive from it, so each command need not catch them itself.
"""
from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

DEBUG_ENV = "PORTKIT_DEBUG"
EXIT_USAGE = 2


class UserError(Exception):
    """Bad input or state. `file`, `key`, `allowed` and `fix` are added to the message when given."""

    def __init__(self, message: str = "", *, file: str | Path | None = None, key: str | None = None,
                 allowed: str | None = None, fix: str | None = None):
        super().__init__(message)
        self.file, self.key, self.allowed, self.fix = file, key, allowed, fix

    def __str__(self) -> str:
        where = ": ".join(str(p) for p in (self.file, self.key) if p)
        text = f"{where}: {super().__str__()}" if where else super().__str__()
        if self.allowed:
            text += f"; allowed: {self.allowed}"
        if self.fix:
            text += f"; fix: {self.fix}"
        return text


def report(prog: str, error: BaseException, debug: bool = False) -> int:
    """Print `error` for the user; return the exit code (2)."""
    if debug or os.environ.get(DEBUG_ENV):
        traceback.print_exception(error)
    print(f"{prog}: {error}", file=sys.stderr)
    return EXIT_USAGE


def contained(root: str | Path, relative: str | Path, file: str | Path | None = None,
              key: str | None = None) -> Path:
    """`root / relative`, refused unless it stays inside `root` once `..` and symlinks are
    resolved: every path read from a recipe, profile, snapshot or manifest goes through here."""
    root_real = Path(root).resolve()
    full = (root_real / relative).resolve()
    if Path(relative).is_absolute() or not full.is_relative_to(root_real):
        raise UserError(f"{str(relative)!r} leads outside {root_real}", file=file, key=key,
                        allowed=f"a relative path inside {root_real} (no '..', no absolute path)",
                        fix="correct the path")
    return Path(root) / relative
