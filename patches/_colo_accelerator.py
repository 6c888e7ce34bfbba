"""PortkitColoAccelerator: Colossal-AI's accelerator interface answered by the active portkit backend.

Colossal-AI asks device questions through `colossalai.accelerator.get_accelerator()`
(a BaseAccelerator, 41 abstract methods, most of them `torch.cuda.<same name>`). This class
forwards them to the backend's `module`: the torch device module of its device type
(torch.cuda for CUDA and ROCm/DCU, torch.npu ...), and on the CPU portkit.hostdevice, where
work runs in order: streams and events exist and return at once, RNG is the CPU
generator, memory is the backend's report. Name, device and communication backend come from the backend.

Built by `build()` at patch time, so importing this module does not import Colossal-AI.
"""
from __future__ import annotations

import functools
import os
from typing import Any

import torch

from portkit.patches._accelerator import BackendAnswers, forward, subclass


# Colossal-AI methods that are `torch.<device>.<same name>(same arguments)`.
FORWARD = ("get_device_name", "synchronize", "get_device_capability", "get_device_properties", "utilization",
           "get_rng_state", "get_rng_state_all", "set_rng_state", "set_rng_state_all", "manual_seed",
           "manual_seed_all", "seed", "seed_all", "initial_seed", "empty_cache", "memory_stats", "memory_summary",
           "memory_snapshot", "memory_allocated", "max_memory_allocated", "reset_max_memory_allocated",
           "reset_max_memory_cached", "memory_reserved", "max_memory_reserved", "set_per_process_memory_fraction",
           "reset_peak_memory_stats", "Stream", "Event", "current_stream", "default_stream", "set_stream", "stream")


class _PortkitColoMixin(BackendAnswers):
    """The answers that are not plain forwards; `build()` adds the FORWARD table."""

    def __init__(self) -> None:
        pass  # name, device and communication backend are read from the active backend each time

    @property
    def _communication_backend(self) -> str:
        return self.backend.dist_backend

    @property
    def _is_synchronous(self) -> bool:
        return self.on_host

    @property
    def support_set_device(self) -> bool:
        return not self.on_host

    def get_version(self) -> str:
        if self._name == "cuda":
            return torch.version.hip or torch.version.cuda or ""
        return self.backend.versions().get(self._name, "") or ""

    def get_current_device(self) -> torch.device:
        return self.backend.device()

    def current_device(self) -> int:
        return self.backend.current_device()

    def set_device(self, device=None) -> None:
        if device is None:
            local = os.environ.get("LOCAL_RANK")
            device = int(local) if local is not None else torch.distributed.get_rank() % self.device_count()
        self.backend.set_device(torch.device(device).index if isinstance(device, (str, torch.device)) else device)

    def is_available(self) -> bool:
        return self.backend.is_available()

    def device_count(self) -> int:
        return self.backend.device_count()

    def autocast(self, enabled: bool = True, dtype: torch.dtype = torch.float16, cache_enabled: bool = True):
        return torch.amp.autocast(device_type=self._name, enabled=enabled, dtype=dtype, cache_enabled=cache_enabled)


@functools.cache
def build() -> type:
    """The BaseAccelerator subclass (built once, on first use, importing Colossal-AI's base)."""
    from colossalai.accelerator.base_accelerator import BaseAccelerator
    forwards = {name: forward(name) for name in FORWARD}
    return subclass("PortkitColoAccelerator", _PortkitColoMixin, BaseAccelerator, forwards, "Colossal-AI")


def make() -> Any:
    return build()()


def is_portkit(accelerator: Any) -> bool:
    return isinstance(accelerator, _PortkitColoMixin)
