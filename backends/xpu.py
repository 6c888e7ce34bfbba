"""Intel GPU (Data Center GPU Max, Arc): device 'xpu', built into torch; XCCL, xpu-smi."""
from __future__ import annotations

import torch
from packaging.version import Version

from portkit.backend import Capabilities, ExtensionBackend, has_module
from portkit.hookspecs import hookimpl

XCCL_SINCE = Version("2.8")  # torch.distributed gained the native 'xccl' backend in torch 2.8


class XPUBackend(ExtensionBackend):  # no extension: torch.xpu is built into torch
    name = "xpu"
    device_type = "xpu"
    dist_backend = "xccl"
    visible_devices_env = "ZE_AFFINITY_MASK"
    priority = 80
    smi_tool = "xpu-smi"
    unavailable_hint = "no Intel GPU visible (check xpu-smi discovery, the Level Zero driver and ZE_AFFINITY_MASK)"
    # Dense bf16 XMX peaks (4096 bf16 FLOP per Xe core per clock): Max 1550 = 128 cores x
    # 1.6 GHz, Max 1100 = 56 cores x 1.55 GHz (Intel Data Center GPU Max product briefs).
    peak_tflops_bf16 = {"Max 1550": 838.9, "Max 1100": 355.5}

    def probe(self):
        """None when an Intel GPU is usable through this torch, else why not."""
        if Version(torch.__version__.split("+")[0]) < XCCL_SINCE:
            return f"torch {torch.__version__} has no XCCL; the xpu backend needs torch >= {XCCL_SINCE}"
        return super().probe()  # torch.xpu present and a device visible

    def capabilities(self):
        return Capabilities(bf16=torch.xpu.is_bf16_supported(), fp16=True, triton=has_module("triton"))

    def versions(self):
        props = torch.xpu.get_device_properties(self.current_device())
        return {"torch": torch.__version__, "driver": getattr(props, "driver_version", None)}


@hookimpl
def portkit_register_backends():
    return [XPUBackend]
