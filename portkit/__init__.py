"""portkit: one installable layer that runs a training recipe unchanged on any accelerator.

Public API (everything else is internal):
    portkit.device(), portkit.dist_backend(), portkit.device_count(), portkit.synchronize(),
    portkit.memory_stats(), portkit.manual_seed(), portkit.capabilities(), portkit.peak_bf16_tflops(),
    portkit.backend() / portkit.select_backend(name) / portkit.registered_backends(),
    portkit.Backend, portkit.ExtensionBackend, portkit.REQUIRED (what a backend class must define), portkit.hookimpl.
Importing portkit imports no training framework (deepspeed, colossalai, megatron).
"""
from portkit import lifetime
from portkit.backend import REQUIRED, Backend, Capabilities, ExtensionBackend
from portkit.hookspecs import hookimpl
from portkit.runtime import (BackendError, active as backend, backends as registered_backends, capabilities, device,
                             device_count, dist_backend, manual_seed, memory_stats, peak_bf16_tflops,
                             select as select_backend, synchronize)

__version__ = "0.1.0"

lifetime.bind_to_parent()  # under `portkit launch`: die with the torchrun agent, never outlive it

__all__ = ["REQUIRED", "Backend", "BackendError", "Capabilities", "ExtensionBackend", "hookimpl", "backend",
           "registered_backends", "capabilities", "device", "device_count", "dist_backend", "manual_seed",
           "memory_stats", "peak_bf16_tflops", "select_backend", "synchronize", "__version__"]
