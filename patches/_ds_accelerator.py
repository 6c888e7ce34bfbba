"""PortkitAccelerator: DeepSpeed's accelerator interface answered by the active portkit backend.

DeepSpeed asks every device question through `get_accelerator()` (65 abstract methods).
This class answers them from `portkit.runtime.active()` and the torch device module of its
device type (torch.cuda for CUDA and ROCm/DCU, torch.npu, torch.mlu ...); on the CPU it
behaves like DeepSpeed's own cpu_accelerator.py. The communication backend is the
backend's `dist_backend`, never a per-vendor guess.

Op builders: where DeepSpeed's compiled op is missing, FusedAdamBuilder and CPUAdamBuilder
give portkit's Adam (patches/_adam_kernels.py) instead of a JIT compile;
ShareMemCommBuilder (a CPU all-reduce shortcut) is reported absent so gloo does the work;
prebuilt ops and every other builder are DeepSpeed's own for the device type.

Built by `build()` at patch time, so importing this module does not import DeepSpeed.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
from typing import Any, Callable

import psutil
import torch

from portkit.patches._accelerator import BackendAnswers, forward, subclass

# DeepSpeed's own accelerator per torch device type: its op builder directory and builders.
NATIVE = {"cpu": "cpu_accelerator.CPU_Accelerator", "cuda": "cuda_accelerator.CUDA_Accelerator",
          "npu": "npu_accelerator.NPU_Accelerator", "xpu": "xpu_accelerator.XPU_Accelerator",
          "mlu": "mlu_accelerator.MLU_Accelerator", "hpu": "hpu_accelerator.HPU_Accelerator",
          "mps": "mps_accelerator.MPS_Accelerator"}

# Builders reported absent unless prebuilt (DeepSpeed then takes its portable path).
ABSENT_BUILDERS = {"ShareMemCommBuilder"}


def _fused_adam_module():
    from portkit.patches._adam_kernels import fused_optim_module
    return fused_optim_module("fused_adam")


def _cpu_adam_module():
    from portkit.patches._adam_kernels import DeepSpeedCPUAdamOps
    return DeepSpeedCPUAdamOps()


# Builder class name -> (DeepSpeed op name, factory of portkit's stand-in module).
PORTKIT_BUILDERS: dict[str, tuple[str, Callable[[], Any]]] = {
    "FusedAdamBuilder": ("fused_adam", _fused_adam_module),
    "CPUAdamBuilder": ("cpu_adam", _cpu_adam_module),
}


class PortkitOpBuilder:
    """Stands in for a DeepSpeed OpBuilder whose compiled op is missing: `load()` returns
    portkit's implementation with the compiled module's functions; nothing is compiled."""

    NAME = ""
    factory: Callable[[], Any]
    _loaded: dict[str, Any] = {}

    def __init__(self) -> None:
        self.name = self.NAME
        self.error_log = None

    def absolute_name(self) -> str:
        return f"portkit.patches._adam_kernels.{self.NAME}"

    def is_compatible(self, verbose: bool = False) -> bool:
        return True

    def load(self, verbose: bool = False) -> Any:
        if self.NAME not in self._loaded:
            self._loaded[self.NAME] = type(self).factory()
        return self._loaded[self.NAME]

    jit_load = load


def portkit_builder(class_name: str) -> type[PortkitOpBuilder]:
    op, factory = PORTKIT_BUILDERS[class_name]
    return type(f"Portkit{class_name}", (PortkitOpBuilder,), {"NAME": op, "factory": staticmethod(factory)})


# DeepSpeed method -> name of the same call on torch.<device> (portkit.hostdevice on the CPU).
FORWARD = {
    "synchronize": "synchronize", "set_rng_state": "set_rng_state", "get_rng_state": "get_rng_state",
    "manual_seed": "manual_seed", "manual_seed_all": "manual_seed_all", "initial_seed": "initial_seed",
    "stream": "stream", "current_stream": "current_stream", "default_stream": "default_stream",
    "empty_cache": "empty_cache", "memory_allocated": "memory_allocated",
    "max_memory_allocated": "max_memory_allocated", "memory_reserved": "memory_reserved",
    "max_memory_reserved": "max_memory_reserved", "memory_cached": "memory_reserved",
    "max_memory_cached": "max_memory_reserved", "reset_peak_memory_stats": "reset_peak_memory_stats",
    "reset_max_memory_allocated": "reset_peak_memory_stats", "reset_max_memory_cached": "reset_peak_memory_stats",
}

# DeepSpeed's typed tensor constructors, e.g. get_accelerator().IntTensor([0]).
TENSOR_TYPES = {"BFloat16Tensor": torch.bfloat16, "ByteTensor": torch.uint8, "DoubleTensor": torch.double,
                "FloatTensor": torch.float, "HalfTensor": torch.half, "IntTensor": torch.int,
                "LongTensor": torch.long}


def _tensor_type(dtype: torch.dtype) -> property:
    return property(lambda self: functools.partial(torch.tensor, dtype=dtype, device=self.device_name()))


class _PortkitAcceleratorMixin(BackendAnswers):
    """The non-trivial answers; `build()` adds the FORWARD and TENSOR_TYPES tables."""

    def __init__(self) -> None:
        self._compile_backend = "inductor"
        self._native = None

    # -- identity: all from the active backend (BackendAnswers: backend, _name, on_host, dev)
    @property
    def _communication_backend_name(self) -> str:
        return self.backend.dist_backend

    def communication_backend_name(self) -> str:
        return self.backend.dist_backend

    def is_synchronized_device(self) -> bool:
        return self.on_host

    use_host_timers = resolves_data_dependency = handles_memory_backpressure = is_synchronized_device

    # -- devices -----------------------------------------------------------------------
    def device_name(self, device_index=None) -> str:
        if self.on_host or device_index is None:
            return self._name
        return f"{self._name}:{device_index}"

    def device(self, device_index=None) -> torch.device:
        return self.backend.device(device_index)

    def set_device(self, device_index) -> None:
        self.backend.set_device(device_index)

    def current_device(self) -> int:
        return self.backend.current_device()

    def current_device_name(self) -> str:
        return self.device_name(None if self.on_host else self.current_device())

    def device_count(self) -> int:
        return self.backend.device_count()

    def is_available(self) -> bool:
        return self.backend.is_available()

    def on_accelerator(self, tensor) -> bool:
        return tensor.device.type == self._name

    # -- random numbers, streams, graphs -----------------------------------------------
    def random(self):
        return torch.random

    def default_generator(self, device_index):
        return torch.default_generator if self.on_host else self.dev.default_generators[device_index]

    @property
    def Stream(self):
        return None if self.on_host else self.dev.Stream  # DeepSpeed's CPU accelerator: no streams

    @property
    def Event(self):
        return None if self.on_host else self.dev.Event

    def range_push(self, msg, domain=None, category=None):
        nvtx = getattr(self.dev, "nvtx", None)
        return nvtx.range_push(msg) if nvtx is not None else None

    def range_pop(self, domain=None):
        nvtx = getattr(self.dev, "nvtx", None)
        return nvtx.range_pop() if nvtx is not None else None

    def lazy_call(self, callback):
        lazy = getattr(self.dev, "_lazy_call", None)
        return lazy(callback) if lazy is not None else callback()

    def create_graph(self):
        return torch.cuda.CUDAGraph() if self._name == "cuda" else None

    def capture_to_graph(self, graph, pool=None, stream=None):
        return torch.cuda.graph(graph, pool, stream) if self._name == "cuda" else contextlib.nullcontext()

    def replay_graph(self, graph):
        if graph is not None:
            graph.replay()

    def is_current_stream_capturing(self) -> bool:
        return self._name == "cuda" and torch.cuda.is_current_stream_capturing()

    # -- memory --------------------------------------------------------------------------
    def memory_stats(self, device_index=None) -> dict:
        if not self.on_host:
            return self.dev.memory_stats(device_index)
        return {"allocated_bytes.all.current": self.memory_allocated(), "allocated_bytes.all.peak": self.max_memory_allocated()}

    def total_memory(self, device_index=None) -> int:
        return self.backend.memory_stats(device_index)["total"]

    def available_memory(self, device_index=None) -> int:
        if self.on_host:
            return psutil.virtual_memory().available
        return self.total_memory(device_index) - self.memory_allocated(device_index)

    @property
    def _torch_pins_host_memory(self) -> bool:
        return not self.on_host

    def pin_memory(self, tensor, make_copy=True, match_shape=True):
        if self.on_host:  # nothing to page-lock for: DeepSpeed's CPU accelerator returns it as is
            return tensor
        return super().pin_memory(tensor, make_copy=make_copy, match_shape=match_shape)

    def _torch_pin_memory(self, tensor):
        return tensor if self.on_host else tensor.pin_memory()

    def _torch_empty_pinned(self, tensor, shape):
        return tensor.new_empty(shape, pin_memory=not self.on_host)

    # -- data types ------------------------------------------------------------------------
    def is_bf16_supported(self) -> bool:
        return self.backend.capabilities().bf16

    def is_fp16_supported(self) -> bool:
        return self.backend.capabilities().fp16

    def supported_dtypes(self) -> list:
        caps = self.backend.capabilities()
        return [torch.float] + [torch.half] * caps.fp16 + [torch.bfloat16] * caps.bf16

    def is_triton_supported(self) -> bool:
        return self.backend.capabilities().triton

    # -- op builders -------------------------------------------------------------------------
    def native(self):
        """DeepSpeed's own accelerator for this device type (op builders only), or None."""
        path = NATIVE.get(self._name)
        if path is None:
            return None
        if self._native is None or self._native._name != self._name:
            module, cls = path.rsplit(".", 1)
            self._native = getattr(importlib.import_module(f"deepspeed.accelerator.{module}"), cls)()
        return self._native

    def op_builder_dir(self) -> str:
        native = self.native()
        return native.op_builder_dir() if native is not None else "deepspeed.ops.op_builder"

    def get_op_builder(self, class_name):
        native = self.native()
        builder = native.get_op_builder(class_name) if native is not None else None
        if builder is not None and self.prebuilt(builder):
            return builder
        if class_name in PORTKIT_BUILDERS:
            return portkit_builder(class_name)
        return None if class_name in ABSENT_BUILDERS else builder

    def create_op_builder(self, class_name):
        builder = self.get_op_builder(class_name)
        return builder() if builder is not None else None

    def prebuilt(self, builder_class) -> bool:
        """Was this op compiled into the DeepSpeed install for this device type?"""
        from deepspeed.git_version_info import accelerator_name, installed_ops
        name = getattr(builder_class, "NAME", None)
        return bool(installed_ops.get(name, False)) and accelerator_name == self._name

    def build_extension(self):
        from torch.utils.cpp_extension import BuildExtension
        return BuildExtension

    # -- launcher environment ----------------------------------------------------------------
    def export_envs(self) -> list[str]:
        return sorted({key.split("_")[0] for key in self.backend.launch_env()})

    def visible_devices_envs(self) -> list[str]:
        env = self.backend.visible_devices_env
        return [env] if env else []

    def set_visible_devices_envs(self, current_env, local_accelerator_ids) -> None:
        for env in self.visible_devices_envs():
            current_env[env] = ",".join(map(str, local_accelerator_ids))

    def get_compile_backend(self) -> str:
        return self._compile_backend

    def set_compile_backend(self, backend: str) -> None:
        supported = torch._dynamo.list_backends(exclude_tags=())
        if backend not in supported:
            raise ValueError(f"compile backend {backend!r} is not one of {supported} on {self._name}")
        self._compile_backend = backend


@functools.cache
def build() -> type:
    """The DeepSpeedAccelerator subclass (built once, on first use, importing DeepSpeed)."""
    from deepspeed.accelerator.abstract_accelerator import DeepSpeedAccelerator
    methods: dict[str, Any] = {name: forward(attr) for name, attr in FORWARD.items()}
    methods.update({name: _tensor_type(dtype) for name, dtype in TENSOR_TYPES.items()})
    return subclass("PortkitAccelerator", _PortkitAcceleratorMixin, DeepSpeedAccelerator, methods, "DeepSpeed")


def make() -> Any:
    return build()()


def is_portkit(accelerator: Any) -> bool:
    return isinstance(accelerator, _PortkitAcceleratorMixin)
