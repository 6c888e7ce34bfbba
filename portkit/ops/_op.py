"""Helpers shared by the op modules: which implementation serves a tensor, row views."""
from __future__ import annotations

from typing import Callable

from torch import Tensor

from portkit import runtime
from portkit.ops import registry


def pick(op: str, reference: Callable, t: Tensor) -> Callable:
    """The implementation for tensors on `t`'s device.

    Registered implementations are chosen for the active backend's device; tensors on
    another device (CPU tensors while a GPU backend is active) run the torch reference.
    """
    if t.device.type != runtime.active().device_type:
        return reference
    return registry.dispatch(op)


def as_rows(x: Tensor) -> Tensor:
    """(..., H) -> contiguous (N, H)."""
    return x.reshape(-1, x.shape[-1]).contiguous()


def n_rows(x: Tensor) -> int:
    return x.numel() // x.shape[-1]


def check_vector(name: str, v: Tensor | None, size: int, op: str) -> None:
    if v is not None and tuple(v.shape) != (size,):
        raise ValueError(f"{op}: {name} has shape {tuple(v.shape)}, expected ({size},) "
                         f"to match the last dimension of x")
