"""torch.cuda on device types other than 'cuda'.

Code written for NVIDIA calls `torch.cuda.*` and passes device='cuda'. portkit answers it
in two ways, both reversible:

- Scoped (used by framework adapters, e.g. patches/megatron.py): `device_module(backend)`
  is the object that stands for torch.cuda on a backend: torch.cuda itself on 'cuda',
  torch.<type> on npu/mlu/xpu, and the backend's host stand-in (portkit.hostdevice) on the
  CPU. `TorchProxy` is a stand-in for the `torch` module whose `.cuda` is that object; an
  adapter puts it in place of the module-global `torch` of the framework modules that need
  it, so nothing else in the process changes.
- Global (the patch "torch.cuda.redirect", framework "torch", like torch_npu's
  transfer_to_npu; `portkit exec` turns it on): where the active backend's device type is
  not 'cuda', every `torch.cuda.<fn>` that torch.<type> (or the host stand-in) offers
  forwards to it, with 'cuda' arguments mapped; on the CPU the rest raise one line naming
  the fix. Device 'cuda' (string, torch.device or `.cuda()`) in tensor factories,
  Tensor.to/.cuda, nn.Module.to/.cuda, torch.Generator and torch.load(map_location=) maps
  to the backend's device type; torch.autocast / torch.amp / torch.cuda.amp (autocast,
  GradScaler, custom_fwd) take it too; init_process_group and new_group with 'nccl' take
  the backend's communication library, and a gloo group lets gloo's threads finish at
  exit. On the host, pin_memory and record_stream are no-ops, DDP drops CUDA device_ids
  and torch.device(int) is the host. An int where a device is expected (`.to(rank)`,
  `.cuda(rank)`, device=rank, torch.device(rank)) means 'cuda:rank', as CUDA reads it.
  Enable with `portkit.patching.enable("torch")` or `install()`; undo with `uninstall()`.
  Not covered: a torch.device('cuda') object compares unequal to the mapped device, and
  C++ code handed such an object unmapped (outside the calls above) still fails.
"""
from __future__ import annotations

import contextlib
import functools
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


def device_module(backend=None) -> Any:
    """The object that answers torch.cuda.* calls on `backend` (default: the active one)."""
    return (backend or runtime.active()).module


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


_TORCH_DEVICE = torch.device


def _device_class(device_type: str):
    """torch.device with 'cuda' mapped to `device_type`; instances are real torch.devices.
    torch.device('cuda', torch.cuda.current_device()) works when current_device is a device."""
    real = _TORCH_DEVICE

    class _Meta(type):
        def __instancecheck__(cls, obj):
            return isinstance(obj, real)

    class device(metaclass=_Meta):
        def __new__(cls, spec=None, index=None, type=None):
            if isinstance(index, real):
                return index
            spec = type if spec is None else spec
            mapped = map_device(cuda_index(spec), device_type)
            if index is None or (device_type == "cpu" and mapped != spec):  # the host has no index
                return real(mapped)
            return real(mapped, index)
    device.__module__, device.__qualname__ = "torch", "device"  # pickled (torch.save) by that name
    return device


# -- the global redirection (like torch_npu's transfer_to_npu, for every backend) --------


_STATE: dict = {"saved": [], "type": None}  # what redirect() replaced, to put back in reverse


def map_device(device: Any, device_type: str) -> Any:
    """'cuda', 'cuda:1' and torch.device('cuda', 1) -> 'npu', 'npu:1' ... for `device_type`
    (the CPU has no index); anything else as given."""
    if isinstance(device, str) and (device == "cuda" or device.startswith("cuda:")):
        return device_type if device_type == "cpu" else device_type + device[4:]
    if isinstance(device, torch.device) and device.type == "cuda":
        return map_device(str(device), device_type)  # torch.device itself checks the type name
    return device


def cuda_index(device: Any) -> Any:
    """An int where a device is expected means 'cuda:int', as CUDA reads it (`.to(rank)`)."""
    return f"cuda:{device}" if isinstance(device, int) and not isinstance(device, bool) else device


def _map_args(args: tuple, kwargs: dict, device_type: str, int_at: int | None = None) -> tuple[tuple, dict]:
    if int_at is not None and len(args) > int_at:  # an int there is a device (elsewhere a size or value)
        args = args[:int_at] + (cuda_index(args[int_at]),) + args[int_at + 1:]
    args = tuple(map_device(a, device_type) for a in args)
    if "device" in kwargs:
        kwargs = dict(kwargs, device=map_device(cuda_index(kwargs["device"]), device_type))
    return args, kwargs


def _mapping(fn, device_type: str, int_at: int | None = None):
    @functools.wraps(fn)
    def mapped(*args, **kwargs):
        args, kwargs = _map_args(args, kwargs, device_type, int_at)
        return fn(*args, **kwargs)
    mapped.__portkit_redirect__ = True
    op = torch.jit._builtins._find_builtin(fn)
    if op is not None:  # TorchScript (@torch.jit.script in Colossal-AI) compiles the wrapper as the aten op
        torch.jit._builtins._register_builtin(mapped, op)
    return mapped


def _cuda_method(device_type: str):
    def cuda(self, device=None, non_blocking=False, **kwargs):
        target = device_type if device is None else map_device(cuda_index(device), device_type)
        return self.to(target, non_blocking=non_blocking, **kwargs)
    return cuda


def _module_cuda(device_type: str):
    def cuda(self, device=None):
        target = device_type if device is None else map_device(cuda_index(device), device_type)
        return self.to(target)
    return cuda


def _nccl_mapping(fn, position: int):
    """init_process_group / new_group with backend 'nccl' (argument `position` or keyword)
    taking the active backend's communication library; a CUDA device_id is dropped on the CPU."""
    @functools.wraps(fn)
    def mapped(*args, **kwargs):
        if kwargs.get("backend") == "nccl":
            kwargs["backend"] = runtime.dist_backend()
        elif len(args) > position and args[position] == "nccl":
            args = args[:position] + (runtime.dist_backend(),) + args[position + 1:]
        if "device_id" in kwargs and runtime.active().device_type == "cpu":
            kwargs.pop("device_id")
        return fn(*args, **kwargs)
    return mapped


def _released_at_exit(init):
    """init_process_group after which a gloo group is released at exit (runtime.release_gloo_at_exit)."""
    @functools.wraps(init)
    def run(*args, **kwargs):
        group = init(*args, **kwargs)
        runtime.release_gloo_at_exit()
        return group
    return run


def _set(owner: Any, name: str, value: Any) -> None:
    _STATE["saved"].append((owner, name, owner.__dict__.get(name, _MISSING)))
    setattr(owner, name, value)


_MISSING = object()


def redirect(device_type: str) -> None:
    """Send torch.cuda calls and 'cuda' devices to `device_type` (npu, mlu, xpu, or cpu:
    the active backend's host stand-in, portkit.hostdevice)."""
    state = _STATE
    if state["type"] is not None:
        raise patching.PatchError(f"torch.cuda is already redirected to {state['type']!r}; undo it first")
    target = runtime.active().module if device_type == "cpu" else getattr(torch, device_type, None)
    if target is None:
        raise patching.PatchError(f"torch.{device_type} does not exist: import the backend's torch "
                                  f"extension (portkit.select_backend does) before redirecting")
    state["type"] = device_type
    for module in NATIVE_PROBE:
        patching.while_importing(module, _native_is_available)
    _redirect_cuda_names(target, device_type)
    _redirect_amp(device_type)
    _redirect_devices(device_type)


# Libraries that load CUDA binaries at import when torch.cuda.is_available() says True
# (bitsandbytes, imported by peft and so by Colossal-AI's booster): imported with torch's own answer.
NATIVE_PROBE = ("bitsandbytes",)
_TORCH_IS_AVAILABLE = torch.cuda.is_available


@contextlib.contextmanager
def _native_is_available():
    redirected, torch.cuda.is_available = torch.cuda.is_available, _TORCH_IS_AVAILABLE
    try:
        yield
    finally:
        torch.cuda.is_available = redirected


def _own_names(module: Any) -> list[str]:
    """Public names torch.cuda defines itself (not typing helpers or submodules it imported)."""
    names = []
    for name in dir(module):
        value = getattr(module, name, None)
        if not name.startswith("_") and not isinstance(value, types.ModuleType) \
                and str(getattr(value, "__module__", "")).startswith("torch.cuda"):
            names.append(name)
    return names


def forwarded_names(target: Any) -> set[str]:
    """The torch.cuda names the global redirection forwards to `target` (the backend's
    device module); `portkit scan` reports from the same set."""
    names = {name for name in _own_names(torch.cuda) if hasattr(target, name)}
    return names | ({"_lazy_call"} if hasattr(target, "_lazy_call") else set())


def _redirect_cuda_names(target: Any, device_type: str) -> None:
    forwarded = forwarded_names(target)
    for name in _own_names(torch.cuda):
        if name in forwarded:
            value = getattr(target, name)
            wrap = callable(value) and not isinstance(value, type)
            _set(torch.cuda, name, _mapping(value, device_type) if wrap else value)
        elif device_type == "cpu" and callable(getattr(torch.cuda, name)):
            _set(torch.cuda, name, _unserved(name, isinstance(getattr(torch.cuda, name), type)))
    if "_lazy_call" in forwarded:
        _set(torch.cuda, "_lazy_call", target._lazy_call)


def _unserved(name: str, is_class: bool = False):
    """Raises when called; a class stays a class (annotations such as `torch.cuda.CUDAGraph | None`
    in transformers and isinstance checks must keep working)."""
    def call(*args, **kwargs):
        raise RuntimeError(f"portkit: torch.cuda.{name} has no counterpart on backend {runtime.active().name!r}; "
                           f"guard the call with `if torch.version.cuda:` or remove it")
    if is_class:
        return type(name, (), {"__new__": call, "__module__": "torch.cuda"})
    call.__name__ = name
    return call


def _map_first(args: tuple, kwargs: dict, name: str, device_type: str) -> tuple[tuple, dict]:
    """Map the device argument given first or as `name`=; GradScaler's defaults to 'cuda'."""
    if args:
        return (map_device(args[0], device_type),) + args[1:], kwargs
    return args, dict(kwargs, **{name: map_device(kwargs.get(name, "cuda"), device_type)})


def _redirect_amp(device_type: str) -> None:
    """torch.autocast / torch.amp with 'cuda', torch.cuda.amp's autocast and GradScaler."""
    real_autocast, real_scaler = torch.amp.autocast, torch.amp.GradScaler

    class autocast(real_autocast):
        def __init__(self, *args, **kwargs):
            args, kwargs = _map_first(args, kwargs, "device_type", device_type)
            super().__init__(*args, **kwargs)

    class cuda_autocast(real_autocast):
        def __init__(self, enabled: bool = True, dtype: torch.dtype = torch.float16, cache_enabled: bool = True):
            super().__init__(device_type, dtype=dtype, enabled=enabled, cache_enabled=cache_enabled)

    class GradScaler(real_scaler):
        def __init__(self, *args, **kwargs):
            args, kwargs = _map_first(args, kwargs, "device", device_type)
            super().__init__(*args, **kwargs)

    class cuda_GradScaler(real_scaler):
        def __init__(self, *args, **kwargs):
            super().__init__(device_type, *args, **kwargs)

    for owner in (torch, torch.amp):
        _set(owner, "autocast", autocast)
    _set(torch.amp, "GradScaler", GradScaler)
    _set(torch.cuda.amp, "autocast", cuda_autocast)
    _set(torch.cuda.amp, "GradScaler", cuda_GradScaler)
    for name in ("custom_fwd", "custom_bwd"):
        _set(torch.cuda.amp, name, functools.partial(getattr(torch.amp, name), device_type=device_type))


def _redirect_devices(device_type: str) -> None:
    for name in FACTORIES:
        if hasattr(torch, name):
            _set(torch, name, _mapping(getattr(torch, name), device_type))
    for name in TENSOR_METHODS:
        _set(torch.Tensor, name, _mapping(getattr(torch.Tensor, name), device_type, int_at=1 if name == "to" else None))
    _set(torch.Tensor, "cuda", _cuda_method(device_type))
    _set(torch.nn.Module, "to", _mapping(torch.nn.Module.to, device_type, int_at=1))
    _set(torch.nn.Module, "cuda", _module_cuda(device_type))
    _set(torch, "Generator", _generator(device_type))
    _set(torch, "load", _map_location(torch.load, device_type))
    if device_type == "cpu":
        _redirect_host_only()
    if torch.distributed.is_available():
        dist = torch.distributed
        _set(dist, "init_process_group", _released_at_exit(_nccl_mapping(dist.init_process_group, 0)))
        _set(dist, "new_group", _nccl_mapping(dist.new_group, 2))


def _redirect_host_only() -> None:
    """What CUDA code does that has no meaning on the host: pinning, stream records, DDP device_ids;
    torch.device(rank), which torch refuses without an accelerator, is the host."""
    _set(torch, "device", _device_class("cpu"))
    _set(torch.Tensor, "pin_memory", lambda self, device=None: self)
    _set(torch.Tensor, "record_stream", lambda self, stream: None)
    ddp = torch.nn.parallel.DistributedDataParallel
    _set(ddp, "__init__", _ddp_without_device_ids(ddp.__init__))


def _ddp_without_device_ids(init):
    @functools.wraps(init)
    def __init__(self, module, device_ids=None, output_device=None, *args, **kwargs):
        init(self, module, None, None, *args, **kwargs)
    return __init__


def _map_location(load, device_type: str):
    @functools.wraps(load)
    def mapped(*args, **kwargs):
        if "map_location" in kwargs:
            kwargs["map_location"] = map_device(kwargs["map_location"], device_type)
        return load(*args, **kwargs)
    return mapped


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
    return None


PATCHES = [
    Patch(name="torch.cuda.redirect", framework="torch", versions=TORCH_VERSIONS, target="torch.cuda",
          description="torch.cuda.*, device 'cuda', autocast/GradScaler and nccl go to the active backend "
                      "(npu, mlu, xpu, or the host on cpu)",
          apply=lambda module: redirect(runtime.active().device_type),
          undo=lambda module: undo_redirect(), needed=_needed),
]


def install() -> list[Patch]:
    """Redirect torch.cuda to the active backend where it is needed (else state 'skipped')."""
    return patching.enable("torch")


def uninstall() -> None:
    patching.disable("torch")
