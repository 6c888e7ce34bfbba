"""torch.cuda on device types other than 'cuda'.

Code written for NVIDIA calls `torch.cuda.*` and passes device='cuda'. portkit answers it
in two ways, both reversible:

- Scoped (used by framework adapters, e.g. patches/megatron.py): `device_module(backend)`
  is the object that stands for torch.cuda on a backend: torch.cuda itself on 'cuda',
  torch.<type> on npu/mlu/xpu, and `CPUDeviceModule` on the CPU (device RNG = the CPU
  generator, streams and events that run in order, no-op synchronize). `TorchProxy` is a
  stand-in for the `torch` module whose `.cuda` is that object; an adapter puts it in
  place of the module-global `torch` of the framework modules that need it, so nothing
  else in the process changes.
- Global (the patch "torch.cuda.redirect", framework "torch", like torch_npu's
  transfer_to_npu): where the active backend's device type is neither 'cuda' nor 'cpu',
  every public `torch.cuda.<fn>` that torch.<type> also offers forwards to it; device
  'cuda' (string, torch.device or `.cuda()`) in tensor factories, Tensor.to/.cuda,
  nn.Module.to/.cuda and torch.Generator maps to the backend's device type; and
  init_process_group(backend='nccl') takes the backend's communication library.
  Enable with `portkit.patching.enable("torch")` or `install()`; undo with `uninstall()`.
  Not covered: a torch.device('cuda') object compares unequal to the mapped device,
  and torch.cuda names that torch.<type> lacks still fail as they would without it.
"""
from __future__ import annotations

import contextlib
import functools
import time
import types
from typing import Any

import torch

from portkit import patching, runtime
from portkit.patching import Patch

TORCH_VERSIONS = ">=2.4,<2.14"  # tested on 2.11 (GPU machines) and 2.13 (CPU)

# torch functions and Tensor methods that take a device: 'cuda' there is mapped
FACTORIES = ["empty", "zeros", "ones", "full", "rand", "randn", "randint", "randperm", "arange",
             "linspace", "logspace", "eye", "tensor", "as_tensor", "empty_strided", "empty_like",
             "zeros_like", "ones_like", "full_like", "rand_like", "randn_like", "randint_like",
             "normal", "scalar_tensor", "tril_indices", "triu_indices"]
TENSOR_METHODS = ["to", "new_empty", "new_zeros", "new_ones", "new_full", "new_tensor"]


# -- the CPU stand-in for torch.cuda ----------------------------------------------------
class _Event:
    """A CPU event: recorded when called (work on the CPU runs in order)."""

    def __init__(self, enable_timing: bool = False, blocking: bool = False, interprocess: bool = False):
        self.t: float | None = None

    def record(self, stream=None) -> None:
        self.t = time.perf_counter()

    def elapsed_time(self, end: "_Event") -> float:
        if self.t is None or end.t is None:
            raise RuntimeError("elapsed_time needs both events recorded first")
        return (end.t - self.t) * 1000.0

    def query(self) -> bool:
        return True

    def synchronize(self) -> None:
        pass

    def wait(self, stream=None) -> None:
        pass


class _Stream:
    """A CPU stream: work is already in order, so waits and syncs return at once."""

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

    def record_event(self, event=None) -> _Event:
        event = event or _Event()
        event.record()
        return event


_DEFAULT_STREAM = _Stream()


def _noop(*args: Any, **kwargs: Any) -> None:
    return None


class CPUDeviceModule(types.ModuleType):
    """What `torch.cuda` means when the device is the CPU. Names it does not define raise an
    AttributeError that names the call, never a silent answer."""

    def __init__(self) -> None:
        super().__init__("portkit.cpu_as_cuda")
        g = torch.default_generator
        self.default_generators = (g,)
        self.FloatTensor, self.HalfTensor, self.BFloat16Tensor = torch.FloatTensor, torch.HalfTensor, torch.BFloat16Tensor
        self.LongTensor, self.IntTensor, self.ByteTensor = torch.LongTensor, torch.IntTensor, torch.ByteTensor
        self.Stream, self.Event, self.ExternalStream = _Stream, _Event, _Stream
        self.OutOfMemoryError = torch.OutOfMemoryError
        self.nvtx = types.SimpleNamespace(range_push=_noop, range_pop=_noop, mark=_noop,
                                          range=lambda *a, **k: contextlib.nullcontext())
        self.random = self
        self.amp = torch.cpu.amp

    # device
    def is_available(self) -> bool:
        return True

    def is_initialized(self) -> bool:
        return True

    def current_device(self) -> torch.device:
        # Used as `device=torch.cuda.current_device()`: an int would mean "the accelerator".
        return torch.device("cpu")

    def device_count(self) -> int:
        return 1

    def set_device(self, device) -> None:
        pass

    def device(self, device=None):
        return contextlib.nullcontext()

    def synchronize(self, device=None) -> None:
        pass

    # streams
    def current_stream(self, device=None) -> _Stream:
        return _DEFAULT_STREAM

    default_stream = current_stream

    def stream(self, stream=None):
        return contextlib.nullcontext()

    def set_stream(self, stream) -> None:
        pass

    # random numbers: the device generator is the CPU generator
    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    manual_seed_all = manual_seed

    def seed(self) -> None:
        torch.seed()

    def initial_seed(self) -> int:
        return torch.initial_seed()

    def get_rng_state(self, device="cuda") -> torch.Tensor:
        return torch.get_rng_state()

    def set_rng_state(self, new_state: torch.Tensor, device="cuda") -> None:
        torch.set_rng_state(new_state)

    # memory: the process's resident memory as the backend reports it
    def memory_allocated(self, device=None) -> int:
        return runtime.memory_stats()["allocated"]

    def max_memory_allocated(self, device=None) -> int:
        return runtime.memory_stats()["peak_allocated"]

    def memory_reserved(self, device=None) -> int:
        return runtime.memory_stats()["reserved"]

    def empty_cache(self) -> None:
        pass

    def reset_peak_memory_stats(self, device=None) -> None:
        pass

    def __getattr__(self, name: str):
        raise AttributeError(f"torch.cuda.{name} has no CPU counterpart in portkit's redirection "
                             f"(portkit.patches.torch_cuda.CPUDeviceModule); add it there or avoid the call")


CPU_MODULE = CPUDeviceModule()


def device_module(backend=None) -> Any:
    """The object that answers torch.cuda.* calls on `backend` (default: the active one)."""
    backend = backend or runtime.active()
    if backend.device_type == "cpu":
        return CPU_MODULE
    return getattr(torch, backend.device_type)


class TorchProxy(types.ModuleType):
    """Stands in for the `torch` module inside chosen modules: `.cuda` is `cuda`, the tensor
    factories, torch.device and torch.autocast map device 'cuda' to `device_type`; every
    other attribute is torch's own (looked up each time, so later changes show through)."""

    def __init__(self, cuda: Any, device_type: str) -> None:
        super().__init__("torch")
        self.cuda = cuda
        if device_type != "cuda":
            for name in FACTORIES + ["autocast"]:
                if hasattr(torch, name):
                    setattr(self, name, _mapping(getattr(torch, name), device_type))
            self.device = _device_class(device_type)

    def __getattr__(self, name: str):
        return getattr(torch, name)


def _device_class(device_type: str):
    """torch.device with 'cuda' mapped to `device_type`; instances are real torch.devices.
    torch.device('cuda', torch.cuda.current_device()) works when current_device is a device."""
    real = torch.device

    class _Meta(type):
        def __instancecheck__(cls, obj):
            return isinstance(obj, real)

    class device(metaclass=_Meta):
        def __new__(cls, spec, index=None):
            if isinstance(index, real):
                return index
            spec = map_device(spec, device_type)
            if device_type == "cpu" or index is None:
                return real(spec)
            return real(spec, index)
    return device


# -- the global redirection for npu / mlu / xpu ------------------------------------------


_STATE: dict = {"saved": [], "type": None}  # what redirect() replaced, to put back in reverse


def map_device(device: Any, device_type: str) -> Any:
    """'cuda', 'cuda:1' and torch.device('cuda', 1) -> 'npu', 'npu:1' ... for `device_type`
    (the CPU has no index); anything else as given."""
    if isinstance(device, str) and (device == "cuda" or device.startswith("cuda:")):
        return device_type if device_type == "cpu" else device_type + device[4:]
    if isinstance(device, torch.device) and device.type == "cuda":
        return map_device(str(device), device_type)  # torch.device itself checks the type name
    return device


def _map_args(args: tuple, kwargs: dict, device_type: str) -> tuple[tuple, dict]:
    args = tuple(map_device(a, device_type) for a in args)
    if "device" in kwargs:
        kwargs = dict(kwargs, device=map_device(kwargs["device"], device_type))
    return args, kwargs


def _mapping(fn, device_type: str):
    @functools.wraps(fn)
    def mapped(*args, **kwargs):
        args, kwargs = _map_args(args, kwargs, device_type)
        return fn(*args, **kwargs)
    mapped.__portkit_redirect__ = True
    return mapped


def _cuda_method(device_type: str):
    def cuda(self, device=None, non_blocking=False, **kwargs):
        target = device_type if device is None else map_device(
            f"cuda:{device}" if isinstance(device, int) else device, device_type)
        return self.to(target, non_blocking=non_blocking, **kwargs)
    return cuda


def _module_cuda(device_type: str):
    def cuda(self, device=None):
        target = device_type if device is None else map_device(
            f"cuda:{device}" if isinstance(device, int) else device, device_type)
        return self.to(target)
    return cuda


def _init_process_group(fn):
    @functools.wraps(fn)
    def init(*args, **kwargs):
        if kwargs.get("backend") == "nccl":
            kwargs["backend"] = runtime.dist_backend()
        elif args and args[0] == "nccl":
            args = (runtime.dist_backend(),) + args[1:]
        return fn(*args, **kwargs)
    return init


def _set(owner: Any, name: str, value: Any) -> None:
    _STATE["saved"].append((owner, name, owner.__dict__.get(name, _MISSING)))
    setattr(owner, name, value)


_MISSING = object()


def redirect(device_type: str) -> None:
    """Send torch.cuda calls and 'cuda' devices to `device_type` (npu, mlu, xpu ...)."""
    state = _STATE
    if state["type"] is not None:
        raise patching.PatchError(f"torch.cuda is already redirected to {state['type']!r}; undo it first")
    target = getattr(torch, device_type, None)
    if target is None:
        raise patching.PatchError(f"torch.{device_type} does not exist: import the backend's torch "
                                  f"extension (portkit.select_backend does) before redirecting")
    state["type"] = device_type
    for name in dir(torch.cuda):
        if not name.startswith("_") and hasattr(target, name) and not isinstance(getattr(target, name), types.ModuleType):
            _set(torch.cuda, name, getattr(target, name))
    _redirect_devices(device_type)


def _redirect_devices(device_type: str) -> None:
    for name in FACTORIES:
        if hasattr(torch, name):
            _set(torch, name, _mapping(getattr(torch, name), device_type))
    for name in TENSOR_METHODS:
        _set(torch.Tensor, name, _mapping(getattr(torch.Tensor, name), device_type))
    _set(torch.Tensor, "cuda", _cuda_method(device_type))
    _set(torch.nn.Module, "to", _mapping(torch.nn.Module.to, device_type))
    _set(torch.nn.Module, "cuda", _module_cuda(device_type))
    _set(torch, "Generator", _generator(device_type))
    if torch.distributed.is_available():
        _set(torch.distributed, "init_process_group", _init_process_group(torch.distributed.init_process_group))


def _generator(device_type: str):
    real = torch.Generator

    class _Meta(type):
        def __instancecheck__(cls, obj):
            return isinstance(obj, real)

    class Generator(metaclass=_Meta):
        """torch.Generator with device 'cuda' mapped; instances are real torch.Generators."""
        def __new__(cls, device="cpu"):
            return real(map_device(device, device_type))
    return Generator


def undo_redirect() -> None:
    state = _STATE
    for owner, name, old in reversed(state["saved"]):
        if old is _MISSING:
            delattr(owner, name)
        else:
            setattr(owner, name, old)
    state["saved"].clear()
    state["type"] = None


def redirected_to() -> str | None:
    """The device type torch.cuda is redirected to now, or None."""
    return _STATE["type"]


def _needed() -> str | None:
    kind = runtime.active().device_type
    if kind == "cuda":
        return "the active backend is a CUDA/ROCm device: torch.cuda is native"
    if kind == "cpu":
        return "the CPU backend: adapters redirect torch.cuda per module (device_module), not globally"
    return None


PATCHES = [
    Patch(name="torch.cuda.redirect", framework="torch", versions=TORCH_VERSIONS, target="torch.cuda",
          description="torch.cuda.* and device='cuda' go to the active backend's device type (npu, mlu, xpu)",
          apply=lambda module: redirect(runtime.active().device_type),
          undo=lambda module: undo_redirect(), needed=_needed),
]


def install() -> list[Patch]:
    """Redirect torch.cuda to the active backend where it is needed (else state 'skipped')."""
    return patching.enable("torch")


def uninstall() -> None:
    patching.disable("torch")
