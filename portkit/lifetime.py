"""Processes bound to their launcher's lifetime.

`portkit launch` sets PORTKIT_DIE_WITH_PARENT=1 for the job. Every process that then imports
portkit (the recipe runner, a script using portkit, the `portkit exec` wrapper) asks the
kernel for SIGKILL the moment its parent, the torchrun agent, dies (prctl PR_SET_PDEATHSIG),
so a killed agent never leaves workers writing a run behind the back of a restart. Where
prctl is missing (not Linux), a daemon thread polls the parent pid instead.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading

ENV = "PORTKIT_DIE_WITH_PARENT"
PR_SET_PDEATHSIG = 1
POLL_S = 0.5
_bound = False


def bind_to_parent() -> None:
    """Die with the parent process when ENV is '1' (idempotent; a no-op otherwise)."""
    global _bound
    if os.environ.get(ENV) != "1" or _bound:
        return
    _bound = True
    parent = os.getppid()
    if not _pdeathsig():
        threading.Thread(target=_watch, args=(parent,), name="portkit-parent-watch", daemon=True).start()
    if os.getppid() != parent or parent == 1:  # the parent died before the binding took effect
        os._exit(137)


def _pdeathsig() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch(parent: int) -> None:
    event = threading.Event()
    while not event.wait(POLL_S):
        if os.getppid() != parent:
            os._exit(137)
