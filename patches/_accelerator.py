"""What the DeepSpeed and Colossal-AI accelerator classes share.

Both answer a framework's accelerator interface from `portkit.runtime.active()`: identity
from the backend, device calls forwarded to its `module` (torch.<device type>, or
portkit.hostdevice on the CPU). Each framework's base class is imported only in `subclass`'s
caller, at patch time.
"""
from __future__ import annotations

from typing import Any, Callable

from portkit import runtime
from portkit.backend import Backend


def forward(attr: str) -> Callable:
    """A method that is `torch.<device>.<attr>(same arguments)`."""
    def method(self, *args, **kwargs):
        return getattr(self.dev, attr)(*args, **kwargs)
    method.__name__ = attr
    return method


class BackendAnswers:
    """Identity and device module, read from the active backend on every call."""

    @property
    def backend(self) -> Backend:
        return runtime.active()

    @property
    def _name(self) -> str:
        return self.backend.device_type

    @property
    def on_host(self) -> bool:
        return self.backend.device_type == "cpu"

    @property
    def dev(self) -> Any:
        """torch.<device type>, or the host stand-in (portkit.hostdevice) on the CPU."""
        return self.backend.module


def subclass(name: str, mixin: type, base: type, methods: dict[str, Any], framework: str) -> type:
    """`framework`'s accelerator class: `mixin`'s answers over `base`, plus `methods`."""
    doc = f"{framework} accelerator that delegates every device question to portkit's active backend."
    return type(name, (mixin, base), {**methods, "__doc__": doc, "__module__": mixin.__module__})
