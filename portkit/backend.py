"""The Backend contract: what portkit needs to know about one kind of accelerator.

A backend is a plain class with typed class attributes and concrete defaults. Most
device calls go through `torch.accelerator` or the torch device module named by
`device_type` (torch.cuda, torch.npu, torch.mlu, torch.xpu); a backend overrides only
what its hardware does differently. Only `probe` must be written by every backend.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from typing import Any, ClassVar

import psutil
import torch


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

    # -- what every backend must provide ------------------------------------------
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
        return Capabilities(bf16=True, fp16=True, triton=self.has_triton())

    def has_triton(self) -> bool:
        try:
            import triton  # noqa: F401
        except ImportError:
            return False
        return self.device_type in ("cuda", "xpu")

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


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes", "on")
