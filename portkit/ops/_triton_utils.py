"""Launch settings shared by the Triton kernels (imported only by the *_triton modules)."""
from __future__ import annotations

import contextlib
import contextvars
import functools
import os
import warnings
from dataclasses import dataclass

import torch
import triton

MAX_ROW = 65536  # widest row one program keeps in registers (elements)


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "") == "1"


@dataclass(frozen=True)
class Asked:
    """A target the launchers are asked about, without its GPU (portkit.ops.crosscompile)."""
    hip: bool  # 64-lane wavefronts (AMD/DCU) rather than 32-lane warps
    sms: int   # multiprocessors (compute units)


_asked: contextvars.ContextVar[Asked | None] = contextvars.ContextVar("portkit_asked_target", default=None)


@contextlib.contextmanager
def asking(target: Asked):
    """Inside, is_hip() and sm_count() answer for `target` instead of the device."""
    token = _asked.set(target)
    try:
        yield
    finally:
        _asked.reset(token)


def is_hip() -> bool:
    asked = _asked.get()
    return asked.hip if asked is not None else _device_is_hip()


@functools.lru_cache(maxsize=None)
def _device_is_hip() -> bool:
    if interpreting():
        return False
    return triton.runtime.driver.active.get_current_target().backend == "hip"


def row_settings(n_cols: int) -> tuple[int, int]:
    """(BLOCK, num_warps) for kernels that keep one row of `n_cols` in registers."""
    block = triton.next_power_of_2(n_cols)
    warps = 4
    if block >= 32768:
        warps = 16 if is_hip() else 32
    elif block >= 8192:
        warps = 16
    elif block >= 2048:
        warps = 8
    return block, warps


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    props = triton.runtime.driver.active.utils.get_device_properties(index)
    return props["multiprocessor_count"]


def sm_count(device: torch.device) -> int:
    """Multiprocessors (compute units) of the device; a small number under the interpreter."""
    asked = _asked.get()
    if asked is not None:
        return asked.sms
    if interpreting() or device.type == "cpu":
        return 4
    return _sm_count(device.index or 0)


def dummy(x: torch.Tensor) -> torch.Tensor:
    """A 1-element stand-in for a pointer argument the kernel never touches (its flag is off)."""
    return x.new_empty(1)


def or_dummy(t: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    return t if t is not None else dummy(x)


_warned: set[str] = set()


def fits(op: str, n_cols: int, limit: int = MAX_ROW) -> bool:
    """False (with a one-time warning) when a row is too wide for the single-block kernel;
    the caller then runs the torch reference."""
    if n_cols <= limit:
        return True
    if op not in _warned:
        _warned.add(op)
        warnings.warn(f"portkit.ops: {op} rows of {n_cols} elements exceed the Triton kernel's "
                      f"limit of {limit}; using the torch reference for them", stacklevel=3)
    return False
