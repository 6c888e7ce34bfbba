"""Named kill points for the fault-injection tests: PORTKIT_KILL_AT=NAME[#N] ends the process
abruptly (as kill -9 would: no cleanup, nothing flushed beyond what is on disk) the N-th
time (default the first) it reaches the point NAME. Unset, a point costs one dict lookup."""
from __future__ import annotations

import os
import sys

KILL_ENV = "PORTKIT_KILL_AT"
_seen: dict[str, int] = {}


def point(name: str) -> None:
    wanted = os.environ.get(KILL_ENV)
    if not wanted:
        return
    target, _, nth = wanted.partition("#")
    if name != target:
        return
    _seen[name] = _seen.get(name, 0) + 1
    if _seen[name] == int(nth or 1):
        sys.stderr.flush()
        os._exit(137)
