"""Small probes shared by the built-in backends: module presence, vendor imports, SMI text."""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import re
import subprocess
import sys
from typing import ClassVar

import torch

from portkit.backend import Backend, Capabilities

# torch.distributed over NCCL (and RCCL, which reads the same variables): with async error
# handling 1 ("TearDown") a collective that fails or times out aborts the communicator and
# ends the process, so torchrun sees the failure instead of a rank blocking forever
# (PyTorch ProcessGroupNCCL, TORCH_NCCL_ASYNC_ERROR_HANDLING). Nothing else here: network
# choices (NCCL_SOCKET_IFNAME, NCCL_IB_*) depend on the node and belong to tuning profiles.
NCCL_SAFE_ENV = {"TORCH_NCCL_ASYNC_ERROR_HANDLING": "1"}


def has_module(name: str) -> bool:
    """True when `name` can be imported, without importing it."""
    if name in sys.modules:
        return True
    return importlib.util.find_spec(name) is not None


def import_reason(name: str) -> str | None:
    """Import a vendor extension that is known to exist; None on success, else why it failed."""
    try:
        importlib.import_module(name)
    except (ImportError, OSError, RuntimeError) as e:  # a broken vendor install: say so, do not crash
        return f"import {name} failed: {type(e).__name__}: {e}"
    return None


def dist_version(dist: str) -> str | None:
    """Installed version of a distribution, read from its metadata (nothing is imported)."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def smi_text(backend: Backend, *args: str) -> str | None:
    """Output of the backend's SMI tool, or None when it is absent, fails or hangs."""
    try:
        return backend.smi(*args)
    except (OSError, subprocess.TimeoutExpired):
        return None


def search(pattern: str, text: str | None) -> str | None:
    """First group of `pattern` in `text` (case-insensitive), or None."""
    if not text:
        return None
    m = re.search(pattern, text, re.IGNORECASE | re.MULTILINE)
    return m.group(1).strip() if m else None


class ExtensionBackend(Backend):
    """A device that torch learns from an out-of-tree extension (torch_npu, torch_mlu):
    importing the extension adds torch.<device_type>. Subclasses set the data below."""

    install_hint: ClassVar[str] = ""      # what to install when the extension is missing
    unavailable_hint: ClassVar[str] = ""  # what to check when no device is visible
    smi_version_args: ClassVar[tuple[str, ...]] = ()  # SMI arguments whose output names the driver
    smi_version_pattern: ClassVar[str] = ""           # regex, group 1 = driver version

    def probe(self):
        ext = self.torch_extension
        if not has_module(ext):
            return f"{ext} is not installed ({self.install_hint})"
        reason = import_reason(ext)
        if reason is not None:
            return reason
        if not hasattr(torch, self.device_type):
            return f"{ext} imported but did not add torch.{self.device_type}; reinstall {ext}"
        if not self.module.is_available():
            return f"torch.{self.device_type}.is_available() is False: {self.unavailable_hint}"
        return None

    def capabilities(self):
        check = getattr(self.module, "is_bf16_supported", None)
        return Capabilities(bf16=bool(check and check()), fp16=True, triton=False)

    def versions(self):
        out = smi_text(self, *self.smi_version_args)
        return {"torch": torch.__version__,
                self.torch_extension: getattr(sys.modules[self.torch_extension], "__version__", None),
                "driver": search(self.smi_version_pattern, out)}
