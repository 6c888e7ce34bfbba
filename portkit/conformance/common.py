"""What every conformance group shares: a check result, the run context, the try-a-check helper."""
from __future__ import annotations

import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from portkit.backend import Backend


@dataclass
class Check:
    name: str
    ok: bool
    reason: str = ""   # on failure: what went wrong and what to fix


@dataclass
class Context:
    backend: Backend
    workdir: Path                    # scratch space of this run (checkpoints, worker outputs)
    timeout: float = 300.0           # seconds allowed to each subprocess
    select_error: str | None = None  # why the backend could not be made active, if it could not


def attempt(name: str, fn: Callable[[], str | None], fix: str = "") -> Check:
    """Run one check. `fn` returns None when it passes, else the reason; raising is a failure."""
    try:
        reason = fn()
    except Exception as e:  # the backend under test may raise anything: report it, go on
        reason = f"raised {describe(e)}"
    if reason is None:
        return Check(name, True)
    return Check(name, False, f"{reason}; {fix}" if fix else reason)


def describe(e: BaseException) -> str:
    """`Type: message` plus the innermost frame, so a vendor sees where it broke."""
    frames = traceback.extract_tb(e.__traceback__)
    where = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    return f"{type(e).__name__}: {e}{where}"


def missing(what: str, name: str = "available") -> list[Check]:
    """The group cannot run because a piece of portkit is absent: a failure, never a pass."""
    return [Check(name, False, f"missing: {what}")]


def needs_active(ctx: Context) -> list[Check] | None:
    """Groups that run code on the backend need it selected; say why not when it is not."""
    if ctx.select_error is None:
        return None
    return [Check("backend selected", False, f"cannot make the backend active: {ctx.select_error}; "
                                             f"fix the contract group first")]
