"""Colossal-AI on any portkit backend.

Colossal-AI 0.5.0 pins torch<=2.5.1; portkit installs it without its pins
(`pip install --no-deps colossalai==0.5.0` plus what it really imports, see
scripts/setup.sh) and it imports and trains with torch 2.13 as is: nothing had to be
patched for the newer torch. What had to be patched is its device handling.

Patches (framework "colossalai", tested on 0.5.0):
- colossalai.accelerator: PortkitColoAccelerator through `set_accelerator`: device, RNG,
  streams, memory and the communication backend (`backend.dist_backend`) come from the
  active backend. `launch`/`launch_from_torch` ignore their `backend` argument and use the
  accelerator's, so this is also how the process group gets gloo/nccl/hccl/cncl.
- colossalai.zero.sanity: LowLevelZeroOptimizer._sanity_checks asserted the accelerator is
  "cuda" or "npu" ("device is required"); it now accepts every portkit backend and keeps
  the dtype check.
- colossalai.zero.streams: on a device without streams (the CPU), LowLevelZero's
  overlap_communication path called `record_stream` (no CPU kernel) and waited on streams;
  there the reduction runs in order on the current stream, still hook-driven.
- colossalai.kernel_loader: CPUAdamLoader, FusedOptimizerLoader and LayerNormLoader load
  Colossal-AI's prebuilt kernel when present, else portkit's (Adam: patches/_adam_kernels.py,
  LayerNorm: portkit.ops.layer_norm) instead of a JIT build that needs CUDA_HOME.
  Not covered: the softmax, MoE, inference and flash-attention loaders (Colossal-AI's own
  paths or errors), GeminiPlugin (needs its CUDA chunk manager), TorchFSDPPlugin
  (torch.cuda.current_device() in torch_fsdp_plugin.py; see patches/torch_cuda.py).

Use from a strategy (models/strategies.py):

    from portkit.patches import colossalai as colo_patch
    backend = colo_patch.init()     # select backend, enable patches, launch_from_torch
    from colossalai.booster import Booster
    from colossalai.booster.plugin import LowLevelZeroPlugin
    booster = Booster(plugin=LowLevelZeroPlugin(stage=2, precision="fp32"))

`init(backend=None, seed=1024, launch=True)` returns the chosen portkit Backend.
`enable()` / `disable()` apply / undo the patches only.
"""
from __future__ import annotations

import types
from typing import Any, Callable

from portkit import adapt, patching, runtime
from portkit.backend import Backend
from portkit.patching import Patch

FRAMEWORK = "colossalai"
VERSIONS = ">=0.5.0,<0.6"  # tested: 0.5.0 with torch 2.13 (CPU, gloo)

_saved: dict = {}


# -- the accelerator ----------------------------------------------------------------------
def _apply_accelerator(api: Any) -> None:
    from portkit.patches import _colo_accelerator
    if _colo_accelerator.is_portkit(api._ACCELERATOR):
        return
    _saved["accelerator"] = api._ACCELERATOR
    api.set_accelerator(_colo_accelerator.make())


def _undo_accelerator(api: Any) -> None:
    api._ACCELERATOR = _saved.pop("accelerator", None)


# -- LowLevelZero ---------------------------------------------------------------------------
def _sanity_checks(self) -> None:
    """Colossal-AI's check without its vendor list: every parameter in the ZeRO dtype."""
    for group in self.optim.param_groups:
        for param in group["params"]:
            if not getattr(param, "skip_zero_check", False):
                assert param.dtype == self._dtype, (
                    f"Parameters are expected to have the same dtype `{self._dtype}`, but got `{param.dtype}`")


def _streamless_reduction(original: Callable) -> Callable:
    """_run_reduction that, where the device has no streams, reduces on the current one."""
    def _run_reduction(self, *args, **kwargs):
        from colossalai.accelerator import get_accelerator
        if not get_accelerator().is_synchronous or not self._overlap_communication:
            return original(self, *args, **kwargs)
        self._overlap_communication = False
        try:
            return original(self, *args, **kwargs)
        finally:
            self._overlap_communication = True
    _run_reduction.__wrapped__ = original
    return _run_reduction


def _method_patch(attr: str, make: Callable[[Any], Any]):
    """apply/undo pair replacing LowLevelZeroOptimizer.<attr> by make(original)."""
    saved: dict = {}

    def apply(module: Any) -> None:
        cls = module.LowLevelZeroOptimizer
        if (id(cls), attr) not in saved:
            patching.replace(cls, attr, make(vars(cls)[attr]), saved)

    def undo(module: Any) -> None:
        if (id(module.LowLevelZeroOptimizer), attr) in saved:
            patching.restore(module.LowLevelZeroOptimizer, attr, saved)

    return apply, undo


# -- kernel loaders ---------------------------------------------------------------------------
def _cpu_adam_module() -> types.ModuleType:
    from portkit.patches._adam_kernels import ColossalCPUAdamOptimizer
    mod = types.ModuleType("cpu_adam", "portkit stand-in for Colossal-AI's compiled cpu_adam")
    mod.CPUAdamOptimizer = ColossalCPUAdamOptimizer
    return mod


def _fused_optim_module() -> types.ModuleType:
    from portkit.patches._adam_kernels import fused_optim_module
    return fused_optim_module("fused_optim")


def _layer_norm_module() -> types.ModuleType:
    from portkit.patches import _colo_kernels
    return _colo_kernels.layer_norm_module()


# Loader class name -> factory of portkit's module with the compiled kernel's functions.
FALLBACKS: dict[str, Callable[[], types.ModuleType]] = {
    "CPUAdamLoader": _cpu_adam_module,
    "FusedOptimizerLoader": _fused_optim_module,
    "LayerNormLoader": _layer_norm_module,
}


def _prebuilt(loader: Any) -> Any:
    """Colossal-AI's own compiled kernel for this loader, if one is installed and usable."""
    for ext_cls in type(loader).REGISTRY:
        ext = ext_cls()
        if not ext.is_available():
            continue
        try:
            return ext.import_op()
        except ImportError:
            continue
    return None


def _loader_with_fallback(original: Callable) -> Callable:
    def load(self, ext_name: str | None = None):
        fallback = FALLBACKS.get(type(self).__name__)
        if ext_name is not None or fallback is None:
            return original(self, ext_name)
        kernel = _prebuilt(self)
        return kernel if kernel is not None else fallback()
    load.__wrapped__ = original
    return load


def _apply_loader(kernel_loader: Any) -> None:
    cls = kernel_loader.KernelLoader
    if not hasattr(vars(cls)["load"], "__wrapped__"):
        patching.replace(cls, "load", _loader_with_fallback(vars(cls)["load"]), _saved)


def _undo_loader(kernel_loader: Any) -> None:
    if (id(kernel_loader.KernelLoader), "load") in _saved:
        patching.restore(kernel_loader.KernelLoader, "load", _saved)


# -- no silent fallback: Colossal-AI on an accelerator other than portkit's ---------------------
LAUNCHERS = ("launch", "launch_from_torch", "launch_from_slurm", "launch_from_openmpi")


def check_accelerator() -> str | None:
    """None when Colossal-AI's accelerator is portkit's, else the one line that says so and the fix."""
    from colossalai.accelerator import api
    from portkit.patches import _colo_accelerator
    accel = api._ACCELERATOR
    if accel is None or _colo_accelerator.is_portkit(accel):
        return None
    return (f"Colossal-AI runs on its own {type(accel).__name__} ({accel.name!r}), not on portkit's backend "
            f"{runtime.active().name!r}: remove the script's colossalai.accelerator.set_accelerator(...) call")


def _checker(owner: Callable[[Any], Any], names: tuple[str, ...]):
    """apply/undo pair wrapping owner(module).<name> so that each call first runs check_accelerator."""
    saved: dict = {}

    def apply(module: Any) -> None:
        for name in names:
            target = owner(module)
            patching.replace(target, name, adapt.warned(getattr(target, name), check_accelerator), saved)

    def undo(module: Any) -> None:
        for name in names:
            patching.restore(owner(module), name, saved)

    return apply, undo


def _patch(name: str, target: str, description: str, apply, undo) -> Patch:
    return Patch(name=name, framework=FRAMEWORK, versions=VERSIONS, target=target,
                 description=description, apply=apply, undo=undo)


_ZERO = "colossalai.zero.low_level.low_level_optim"
PATCHES = [
    _patch("colossalai.accelerator", "colossalai.accelerator.api",
           "Colossal-AI accelerator = portkit's active backend (device, RNG, streams, memory, dist_backend)",
           _apply_accelerator, _undo_accelerator),
    _patch("colossalai.zero.sanity", _ZERO,
           "LowLevelZero accepts every portkit backend (was: accelerator name in ['cuda', 'npu'])",
           *_method_patch("_sanity_checks", lambda original: _sanity_checks)),
    _patch("colossalai.zero.streams", _ZERO,
           "LowLevelZero overlap_communication on stream-less devices (CPU): no record_stream, in-order reduction",
           *_method_patch("_run_reduction", _streamless_reduction)),
    _patch("colossalai.kernel_loader", "colossalai.kernel.kernel_loader",
           "CPUAdam/FusedOptimizer/LayerNorm loaders use portkit ops where the compiled kernel is missing",
           _apply_loader, _undo_loader),
    _patch("colossalai.accelerator_check", "colossalai",
           "colossalai.launch* say so (one line) when Colossal-AI's accelerator is not portkit's",
           *_checker(lambda module: module, LAUNCHERS)),
    _patch("colossalai.booster_check", "colossalai.booster.booster",
           "Booster.boost says so (one line) when Colossal-AI's accelerator is not portkit's",
           *_checker(lambda module: module.Booster, ("boost",))),
]


# -- entry points for strategies ----------------------------------------------------------------
def enable() -> list[Patch]:
    """Apply the Colossal-AI patches (now, or when Colossal-AI is imported)."""
    return patching.enable(FRAMEWORK)


def disable() -> None:
    patching.disable(FRAMEWORK)


def init(backend: str | None = None, seed: int = 1024, launch: bool = True) -> Backend:
    """Select the portkit backend, enable the patches and, with `launch`, initialise
    torch.distributed through `colossalai.launch_from_torch` (backend's dist_backend)."""
    chosen = runtime.select(backend)
    enable()
    if launch:
        import colossalai
        colossalai.launch_from_torch(seed=seed, backend=chosen.dist_backend, verbose=False)
    return chosen
