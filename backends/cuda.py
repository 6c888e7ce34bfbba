"""NVIDIA CUDA: device 'cuda', NCCL, nvidia-smi.

A ROCm build of torch also answers torch.cuda; it is told apart by torch.version.hip and
left to the rocm backend.
"""
from __future__ import annotations

import torch

from portkit.backend import Backend, Capabilities, has_module, search, smi_text
from portkit.backends._common import NCCL_SAFE_ENV
from portkit.hookspecs import hookimpl


def cuda_probe() -> str | None:
    """None when an NVIDIA GPU is usable through this torch, else why not."""
    if torch.version.hip is not None:
        return f"this torch is a ROCm build (HIP {torch.version.hip}); the rocm backend serves it"
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is built without CUDA"
    if not torch.cuda.is_available():
        return ("torch.cuda.is_available() is False: no NVIDIA GPU visible "
                "(check the driver with nvidia-smi and CUDA_VISIBLE_DEVICES)")
    return None


class CUDABackend(Backend):
    name = "cuda"
    device_type = "cuda"
    dist_backend = "nccl"
    visible_devices_env = "CUDA_VISIBLE_DEVICES"
    priority = 100
    smi_tool = "nvidia-smi"
    comm_env = NCCL_SAFE_ENV
    # Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's datasheets. Matched as
    # substrings of the device name in this order, so the specific variants come first:
    # the H100 SXM reports itself as e.g. "NVIDIA H100 80GB HBM3".
    peak_tflops_bf16 = {
        "H100 PCIe": 756.0,
        "H100 NVL": 835.0,
        "H100": 989.0,
        "H200": 989.0,
        "B200": 2250.0,
        "A100": 312.0,
        "L40S": 362.0,
    }

    def probe(self):
        return cuda_probe()

    def capabilities(self):
        cc = torch.cuda.get_device_capability(self.current_device())
        return Capabilities(bf16=torch.cuda.is_bf16_supported(), fp16=True,
                            fp8=cc >= (8, 9),               # Ada and Hopper tensor cores
                            flash_attention=cc >= (8, 0),   # FlashAttention-2 needs Ampere or newer
                            triton=has_module("triton"))

    def versions(self):
        out = smi_text(self, "--query-gpu=driver_version", "--format=csv,noheader")
        cudnn = torch.backends.cudnn.version()
        return {"torch": torch.__version__, "cuda_runtime": torch.version.cuda,
                "cudnn": str(cudnn) if cudnn else None, "driver": search(r"^(\S+)", out)}


@hookimpl
def portkit_register_backends():
    return [CUDABackend]
