"""The host as a device: what torch.cuda means when a backend's device type is 'cpu'.

One object answers for every adapter on the CPU and on every CPU stand-in (the cpu backend,
a vendor plugin before its hardware code exists, the scaffold): `Backend.module` returns it,
the global torch.cuda redirection (patches/torch_cuda.py) forwards torch.cuda.* to it, and
the DeepSpeed and Colossal-AI accelerators take their device calls from it. Work on the host
runs in order, so streams and events exist and are always complete; the device RNG is the
CPU generator; memory is what the backend reports. A name it lacks raises AttributeError
naming the call and the fix, never a silent answer.
"""
from __future__ import annotations

import contextlib
import os
import time
import types
from typing import Any

import psutil
import torch


class HostEvent:
    """An event on the host: recorded when called (work runs in order)."""

    def __init__(self, enable_timing: bool = False, blocking: bool = False, interprocess: bool = False):
        self.t: float | None = None

    def record(self, stream=None) -> None:
        self.t = time.perf_counter()

    def elapsed_time(self, end: "HostEvent") -> float:
        if self.t is None or end.t is None:
            raise RuntimeError("elapsed_time needs both events recorded first")
        return (end.t - self.t) * 1000.0

    def query(self) -> bool:
        return True

    def synchronize(self) -> None:
        pass

    def wait(self, stream=None) -> None:
        pass


class HostStream:
    """A stream on the host: work is already in order, so waits and syncs return at once."""

    def __init__(self, device=None, priority: int = 0, **kwargs: Any):
        self.device = torch.device("cpu")
        self.priority = priority

    def synchronize(self) -> None:
        pass

    def query(self) -> bool:
        return True

    def wait_stream(self, stream) -> None:
        pass

    def wait_event(self, event) -> None:
        pass

    def record_event(self, event=None) -> HostEvent:
        event = event or HostEvent()
        event.record()
        return event

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


DEFAULT_STREAM = HostStream()


def _noop(*args: Any, **kwargs: Any) -> None:
    return None


class HostDevice(types.ModuleType):
    """torch.cuda's API answered on the host for `backend` (a portkit Backend of device type 'cpu')."""

    Stream = ExternalStream = HostStream
    Event = HostEvent

    def __init__(self, backend: Any) -> None:
        super().__init__(f"portkit.hostdevice[{backend.name}]")
        self.backend = backend
        self.default_generators = (torch.default_generator,)
        self.FloatTensor, self.HalfTensor, self.BFloat16Tensor = torch.FloatTensor, torch.HalfTensor, torch.BFloat16Tensor
        self.LongTensor, self.IntTensor, self.ByteTensor = torch.LongTensor, torch.IntTensor, torch.ByteTensor
        self.DoubleTensor = torch.DoubleTensor
        self.OutOfMemoryError = torch.OutOfMemoryError
        self.nvtx = types.SimpleNamespace(range_push=_noop, range_pop=_noop, mark=_noop,
                                          range=lambda *a, **k: contextlib.nullcontext())
        self.random = self

    # -- device ------------------------------------------------------------------------
    def is_available(self) -> bool:
        return True

    def is_initialized(self) -> bool:
        return True

    def init(self) -> None:
        pass

    def current_device(self) -> torch.device:
        # Used as `device=torch.cuda.current_device()`: an int would mean "the accelerator".
        return torch.device("cpu")

    def device_count(self) -> int:
        return self.backend.device_count()

    def set_device(self, device) -> None:
        pass

    def device(self, device=None):
        return contextlib.nullcontext()

    def synchronize(self, device=None) -> None:
        pass  # host work has run by the time the call returns

    def get_device_name(self, device=None) -> str:
        return self.backend.device_name(0)

    def get_device_capability(self, device=None) -> tuple[int, int]:
        return (0, 0)  # no CUDA compute capability: code gating on it takes its portable path

    def get_device_properties(self, device=None) -> types.SimpleNamespace:
        return types.SimpleNamespace(name=self.get_device_name(), major=0, minor=0,
                                     total_memory=self.backend.memory_stats()["total"],
                                     multi_processor_count=os.cpu_count() or 1)

    def is_bf16_supported(self, including_emulation: bool = True) -> bool:
        return self.backend.capabilities().bf16

    def _lazy_call(self, callable_, **kwargs) -> None:
        callable_()

    # -- streams -------------------------------------------------------------------------
    def current_stream(self, device=None) -> HostStream:
        return DEFAULT_STREAM

    default_stream = current_stream

    def stream(self, stream=None):
        return contextlib.nullcontext()

    def set_stream(self, stream) -> None:
        pass

    def is_current_stream_capturing(self) -> bool:
        # No graph is ever captured on the host. torch's optimizers ask on a machine whose
        # accelerator is CUDA (torch.optim's _accelerator_graph_capture_health_check).
        return False

    # -- random numbers: the device generator is the CPU generator --------------------------
    # torch.manual_seed and torch.seed call torch.cuda's: only the CPU generator here, no loop
    def manual_seed(self, seed: int) -> None:
        torch.default_generator.manual_seed(int(seed))

    manual_seed_all = manual_seed

    def seed(self) -> None:
        torch.default_generator.seed()

    seed_all = seed

    def initial_seed(self) -> int:
        return torch.initial_seed()

    def get_rng_state(self, device=None) -> torch.Tensor:
        return torch.get_rng_state()

    def set_rng_state(self, new_state: torch.Tensor, device=None) -> None:
        torch.set_rng_state(new_state)

    def get_rng_state_all(self) -> list[torch.Tensor]:
        return [torch.get_rng_state()]

    def set_rng_state_all(self, new_states) -> None:
        torch.set_rng_state(new_states[0])

    # -- memory: what the backend reports ------------------------------------------------------
    def memory_allocated(self, device=None) -> int:
        return self.backend.memory_stats()["allocated"]

    def max_memory_allocated(self, device=None) -> int:
        return self.backend.memory_stats()["peak_allocated"]

    def memory_reserved(self, device=None) -> int:
        return self.backend.memory_stats()["reserved"]

    max_memory_reserved = max_memory_allocated
    memory_cached, max_memory_cached = memory_reserved, max_memory_allocated

    def memory_stats(self, device=None) -> dict[str, int]:
        stats = self.backend.memory_stats()
        return {"allocated_bytes.all.current": stats["allocated"], "allocated_bytes.all.peak": stats["peak_allocated"],
                "reserved_bytes.all.current": stats["reserved"]}

    def mem_get_info(self, device=None) -> tuple[int, int]:
        return psutil.virtual_memory().available, self.backend.memory_stats()["total"]

    def empty_cache(self) -> None:
        pass

    def reset_peak_memory_stats(self, device=None) -> None:
        pass  # the backend's report has no resettable peak on the host

    reset_max_memory_allocated = reset_max_memory_cached = reset_peak_memory_stats

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        raise AttributeError(f"portkit: torch.cuda.{name} has no host counterpart on backend {self.backend.name!r} "
                             f"(portkit.hostdevice.HostDevice); add it there or avoid the call")


_HOSTS: dict[int, HostDevice] = {}


def host_device(backend: Any) -> HostDevice:
    """The one HostDevice of `backend` (built on first use)."""
    if id(backend) not in _HOSTS:
        _HOSTS[id(backend)] = HostDevice(backend)
    return _HOSTS[id(backend)]
