"""The Backend contract: what portkit needs to know about one kind of accelerator.

A backend is a plain class with typed class attributes and concrete defaults. Most
device calls go through the torch device module named by `device_type` (torch.cuda,
torch.npu, torch.mlu, torch.xpu); a backend overrides only what its hardware does
differently. Every backend class must define the members listed in `REQUIRED` itself;
everything else has a default. `ExtensionBackend` is the base of a device that torch
learns from an extension (torch_npu, torch_mlu): a subclass is mostly data.
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import re
import shutil
import subprocess
import sys
from typing import Any, ClassVar

import psutil
import torch

# What every backend class must define itself (inheriting Backend's value would be a silent
# fallback), and how. `portkit conformance` checks each; docs/vendor-guide.md prints this list.
REQUIRED: dict[str, str] = {
    "name": "set name = '<your backend>' as a class attribute (a lowercase identifier)",
    "device_type": "set device_type = '<torch device type>' as a class attribute (e.g. 'npu'; 'cuda' for ROCm/DCU)",
    "dist_backend": "set dist_backend = '<torch.distributed backend>' as a class attribute (nccl, hccl, cncl, gloo ...)",
    "probe": "define probe(self) -> str | None: None when the device is usable here, else why not",
}


@dataclasses.dataclass(frozen=True)
class Capabilities:
    bf16: bool = False
    fp16: bool = False
    fp8: bool = False
    flash_attention: bool = False
    triton: bool = False


class Backend:
    """One accelerator family. Subclass it in a plugin and return the class from
    `portkit_register_backends`. Class attributes are the data; methods the device calls."""

    name: ClassVar[str] = ""
    device_type: ClassVar[str] = "cpu"       # torch device type: 'cuda' serves CUDA and ROCm/DCU
    dist_backend: ClassVar[str] = "gloo"     # torch.distributed backend: nccl (RCCL on ROCm), hccl, cncl, gloo
    visible_devices_env: ClassVar[str | None] = None  # e.g. CUDA_VISIBLE_DEVICES
    priority: ClassVar[int] = 0              # auto-selection picks the available backend with the highest
    smi_tool: ClassVar[str | None] = None    # vendor SMI command for diagnostics, e.g. nvidia-smi
    torch_extension: ClassVar[str | None] = None  # module that adds the device to torch, e.g. torch_npu
    comm_env: ClassVar[dict[str, str]] = {}  # default communication-library environment for launches
    peak_tflops_bf16: ClassVar[dict[str, float]] = {}  # device-name substring -> dense bf16 TFLOP/s

    # -- what every backend must provide (with name, device_type, dist_backend: REQUIRED)
    def probe(self) -> str | None:
        """Return None when this backend can run here, else the reason it cannot.
        Must be cheap and must not import heavy vendor modules unless they exist."""
        raise NotImplementedError(f"backend {self.name!r} must implement probe()")

    # -- concrete defaults --------------------------------------------------------
    def is_available(self) -> bool:
        return self.probe() is None

    def setup(self) -> None:
        """Called once when the backend is chosen: import the torch extension, if any."""
        if self.torch_extension:
            __import__(self.torch_extension)

    @property
    def module(self) -> Any:
        """The torch device module (torch.cuda, torch.npu ...); on the CPU, portkit's host
        stand-in for torch.cuda (portkit.hostdevice), shared by every adapter."""
        if self.device_type == "cpu":
            from portkit.hostdevice import host_device
            return host_device(self)
        return getattr(torch, self.device_type)

    def device(self, index: int | None = None) -> torch.device:
        if self.device_type == "cpu":
            return torch.device("cpu")
        return torch.device(self.device_type, self.current_device() if index is None else index)

    def current_device(self) -> int:
        return self.module.current_device() if self.device_type != "cpu" else 0

    def set_device(self, index: int) -> None:
        if self.device_type != "cpu":
            self.module.set_device(index)

    def device_count(self) -> int:
        return self.module.device_count() if self.device_type != "cpu" else 1

    def device_name(self, index: int = 0) -> str:
        return self.module.get_device_name(index) if self.device_type != "cpu" else "host CPU"

    def synchronize(self) -> None:
        if self.device_type != "cpu":
            self.module.synchronize()

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)
        if self.device_type != "cpu":
            self.module.manual_seed_all(seed)

    def memory_stats(self, index: int | None = None) -> dict[str, int]:
        """Bytes: allocated, peak_allocated, reserved, total."""
        if self.device_type == "cpu":  # no allocator counters: this process's resident memory
            rss = psutil.Process().memory_info().rss
            return {"allocated": rss, "peak_allocated": rss, "reserved": rss, "total": psutil.virtual_memory().total}
        i = self.current_device() if index is None else index
        m = self.module
        return {"allocated": m.memory_allocated(i), "peak_allocated": m.max_memory_allocated(i),
                "reserved": m.memory_reserved(i), "total": m.get_device_properties(i).total_memory}

    def reset_peak_memory(self) -> None:
        if self.device_type != "cpu":
            self.module.reset_peak_memory_stats()

    def capabilities(self) -> Capabilities:
        return Capabilities(bf16=True, fp16=True, triton=self.device_type in ("cuda", "xpu") and has_module("triton"))

    def peak_bf16_tflops(self, index: int = 0) -> float | None:
        """Dense bf16 peak of one device, for MFU; None when the device is not in the table."""
        name = self.device_name(index).lower()
        for key, value in self.peak_tflops_bf16.items():
            if key.lower() in name:
                return value
        return None

    def versions(self) -> dict[str, str | None]:
        """torch, runtime and driver versions as the backend knows them."""
        return {"torch": torch.__version__}

    def smi(self, *args: str, timeout: float = 10.0) -> str | None:
        """Run the SMI tool with fixed arguments (never a shell); None when it is absent."""
        tool = self.find_smi()
        if tool is None:
            return None
        done = subprocess.run([tool, *args], capture_output=True, text=True, timeout=timeout, check=False)
        return done.stdout if done.returncode == 0 else None

    def find_smi(self) -> str | None:
        return shutil.which(self.smi_tool) if self.smi_tool else None

    def launch_env(self) -> dict[str, str]:
        """Environment a launcher exports for this backend (communication defaults)."""
        return dict(self.comm_env)

    def describe(self) -> dict[str, Any]:
        """Everything `portkit doctor` shows about this backend."""
        from portkit.runtime import availability
        reason = availability(self)
        info: dict[str, Any] = {
            "name": self.name, "available": reason is None, "reason": reason,
            "device_type": self.device_type, "dist_backend": self.dist_backend,
            "priority": self.priority, "visible_devices_env": self.visible_devices_env,
            "smi_tool": self.smi_tool, "smi_found": self.find_smi(),
        }
        if reason is None:
            n = self.device_count()
            info.update(device_count=n, devices=[self.device_name(i) for i in range(n)],
                        versions=self.versions(), capabilities=dataclasses.asdict(self.capabilities()),
                        peak_bf16_tflops=self.peak_bf16_tflops() if n else None)
        return info


# -- probes shared by backends: module presence, vendor imports, SMI text --------------
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


def smi_text(backend: Backend, *args: str) -> str | None:
    """Output of the backend's SMI tool, or None when it is absent, fails or hangs."""
    try:
        return backend.smi(*args)
    except (OSError, subprocess.TimeoutExpired):
        return None


def search(pattern: str, text: str | None) -> str | None:
    """First group of `pattern` in `text` (case-insensitive), or None."""
    if not text or not pattern:
        return None
    m = re.search(pattern, text, re.IGNORECASE | re.MULTILINE)
    return m.group(1).strip() if m else None


# -- a device torch learns from an extension ---------------------------------------------
# While `hardware_ready` is False the backend is a CPU stand-in: these facts, and the
# device calls of the cpu backend, answer for it (priority -1: only chosen by name).
STAND_IN = {"device_type": "cpu", "dist_backend": "gloo", "visible_devices_env": None, "torch_extension": None,
            "priority": -1}
HOST_CALLS = ("probe", "device", "current_device", "set_device", "device_count", "device_name", "synchronize",
              "manual_seed", "memory_stats", "reset_peak_memory", "capabilities", "peak_bf16_tflops")


class ExtensionBackend(Backend):
    """A device that torch knows as torch.<device_type>, often added by an out-of-tree
    extension (torch_npu, torch_mlu) that `setup()` imports. Subclasses set the data below;
    the device calls are Backend's defaults on that module."""

    hardware_ready: ClassVar[bool] = True  # False: run as a CPU stand-in until the device code is written
    install_hint: ClassVar[str] = ""      # what to install when the extension is missing
    unavailable_hint: ClassVar[str] = ""  # what to check when no device is visible
    smi_version_args: ClassVar[tuple[str, ...]] = ()  # SMI arguments whose output names the driver
    smi_version_pattern: ClassVar[str] = ""           # regex, group 1 = driver version

    def __init__(self) -> None:
        if not self.hardware_ready:
            self.stand_in()

    def stand_in(self) -> None:
        """Answer as the cpu backend does, keeping this class's name; the class keeps its facts."""
        from portkit.backends.cpu import CPUBackend  # the host; imported here since it imports this module
        host = CPUBackend()
        facts = f"{self.device_type}/{self.dist_backend}"
        vars(self).update(STAND_IN)  # device type 'cpu': `module` is the host device (portkit.hostdevice)
        vars(self).update({call: getattr(host, call) for call in HOST_CALLS})
        self.versions = lambda: {**host.versions(), "mode": f"CPU stand-in for {facts} (hardware_ready = False)"}

    def probe(self):
        reason = self.extension_reason()
        if reason is not None:
            return reason
        if not hasattr(torch, self.device_type):
            return f"this torch has no torch.{self.device_type}"
        if not self.module.is_available():
            return f"torch.{self.device_type}.is_available() is False: {self.unavailable_hint}"
        return None

    def extension_reason(self) -> str | None:
        """None when the torch extension (if any) imports and adds torch.<device_type>, else why not."""
        ext = self.torch_extension
        if not ext:
            return None
        if not has_module(ext):
            return f"{ext} is not installed ({self.install_hint})"
        reason = import_reason(ext)
        if reason is None and not hasattr(torch, self.device_type):
            return f"{ext} imported but did not add torch.{self.device_type}; reinstall {ext}"
        return reason

    def capabilities(self):
        check = getattr(self.module, "is_bf16_supported", None)
        return Capabilities(bf16=bool(check and check()), fp16=True, triton=False)

    def versions(self):
        found = {"torch": torch.__version__}
        if self.torch_extension:
            found[self.torch_extension] = getattr(sys.modules[self.torch_extension], "__version__", None)
        found["driver"] = search(self.smi_version_pattern, smi_text(self, *self.smi_version_args))
        return found
