"""Huawei Ascend NPU: device 'npu' (PrivateUse1, added by torch_npu), HCCL, npu-smi."""
from __future__ import annotations

import dataclasses
import sys

from portkit.backend import ExtensionBackend
from portkit.hookspecs import hookimpl


class NPUBackend(ExtensionBackend):
    name = "npu"
    device_type = "npu"
    dist_backend = "hccl"
    visible_devices_env = "ASCEND_RT_VISIBLE_DEVICES"
    priority = 90
    smi_tool = "npu-smi"
    torch_extension = "torch_npu"
    install_hint = "Ascend's PyTorch adapter: pip install torch-npu matching this torch and the CANN toolkit"
    unavailable_hint = ("no Ascend NPU visible; check `npu-smi info`, that the CANN environment "
                        "(set_env.sh) is sourced, and ASCEND_RT_VISIBLE_DEVICES")
    smi_version_args = ("info",)
    smi_version_pattern = r"Version:\s*(\S+)"  # npu-smi info header: "npu-smi 23.0.6   Version: 23.0.6"
    # HCCL waits 120 s by default for all ranks to connect; large jobs start slower than that
    # (Ascend HCCL environment variable reference, HCCL_CONNECT_TIMEOUT, range 120-7200 s).
    comm_env = {"HCCL_CONNECT_TIMEOUT": "1200"}
    # Approximate: Huawei quotes about 320 TFLOP/s half precision for the Ascend 910 class;
    # the 910B variants (910B1..B4) differ by core count and clock, so MFU there is an estimate.
    peak_tflops_bf16 = {"910B": 320.0}

    def capabilities(self):
        # torch_npu's fused attention kernel is the flash-attention equivalent on Ascend
        fused = hasattr(sys.modules["torch_npu"], "npu_fusion_attention")
        return dataclasses.replace(super().capabilities(), flash_attention=fused)


@hookimpl
def portkit_register_backends():
    return [NPUBackend]
