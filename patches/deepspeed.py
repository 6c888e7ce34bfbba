"""DeepSpeed on any portkit backend.

Patches (framework "deepspeed", tested on 0.19.8):
- deepspeed.accelerator: installs PortkitAccelerator through DeepSpeed's own hook
  (`set_accelerator`), so device, RNG, streams, memory and the communication backend
  (`backend.dist_backend`: gloo, nccl/RCCL, hccl, cncl ...) come from the active backend;
  ZeRO-1/2/3 then run on cpu, cuda, rocm/DCU and plugin backends alike.
- deepspeed.op_builder, deepspeed.fused_adam, deepspeed.cpu_adam: rebind the builder names
  those modules took at import (when DeepSpeed was imported before the patches), so
  `deepspeed.ops.adam.FusedAdam` and `DeepSpeedCPUAdam` load portkit's Adam where the
  compiled op is missing, and DeepSpeed's compiled op where it was prebuilt.

Use from a strategy (models/strategies.py):

    from portkit.patches import deepspeed as ds_patch
    backend = ds_patch.init()            # select backend, enable patches, init distributed
    import deepspeed
    engine, opt, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=cfg)

`init(backend=None, init_distributed=True)` returns the chosen portkit Backend; it binds
this process to its LOCAL_RANK device and calls `deepspeed.init_distributed` with the
backend's `dist_backend`. `enable()` / `disable()` apply / undo the patches only.
"""
from __future__ import annotations

import os
from typing import Any

from portkit import patching, runtime
from portkit.backend import Backend
from portkit.patching import Patch

FRAMEWORK = "deepspeed"
VERSIONS = ">=0.19.8,<0.20"  # tested: 0.19.8 (CPU gloo, CUDA nccl)

_saved: dict = {}


# -- the accelerator -------------------------------------------------------------------
def _apply_accelerator(real_accelerator: Any) -> None:
    from portkit.patches import _ds_accelerator
    current = real_accelerator.ds_accelerator
    if _ds_accelerator.is_portkit(current):
        return
    _saved["accelerator"] = current
    real_accelerator.set_accelerator(_ds_accelerator.make())


def _undo_accelerator(real_accelerator: Any) -> None:
    # set_accelerator rejects None, which is what "not chosen yet" looks like.
    real_accelerator.ds_accelerator = _saved.pop("accelerator", None)


# -- builder names bound at import time -------------------------------------------------
def _builder_names(module: Any, only: tuple[str, ...]) -> list[str]:
    names = [n for n in vars(module) if n.endswith("Builder") and n not in ("OpBuilder", "CUDAOpBuilder")]
    return [n for n in names if not only or n in only]


def _rebinder(only: tuple[str, ...] = ()):
    """apply/undo pair that rebinds `XBuilder` names of a module to get_op_builder('XBuilder')."""
    saved: dict = {}

    def apply(module: Any) -> None:
        from deepspeed.accelerator import get_accelerator
        for name in _builder_names(module, only):
            patching.replace(module, name, get_accelerator().get_op_builder(name), saved)

    def undo(module: Any) -> None:
        for name in _builder_names(module, only):
            if (id(module), name) in saved:
                patching.restore(module, name, saved)

    return apply, undo


# -- no silent fallback: DeepSpeed on an accelerator other than portkit's -------------------
def check_accelerator() -> str | None:
    """None when DeepSpeed's accelerator is portkit's, else the one line that says so and the fix."""
    from deepspeed.accelerator import get_accelerator
    from portkit.patches import _ds_accelerator
    accel = get_accelerator()
    if _ds_accelerator.is_portkit(accel):
        return None
    return (f"DeepSpeed runs on its own {type(accel).__name__} ({accel._name!r}), not on portkit's backend "
            f"{runtime.active().name!r}: remove the script's set_accelerator(...) call or DS_ACCELERATOR setting")


def _checked(fn):
    def run(*args, **kwargs):
        from portkit import adapt
        problem = check_accelerator()
        if problem is not None:
            adapt.warn(problem)
        return fn(*args, **kwargs)
    run.__wrapped__ = fn
    return run


def _apply_check(module: Any) -> None:
    for name in ("initialize", "init_distributed"):
        patching.replace(module, name, _checked(getattr(module, name)), _saved)


def _undo_check(module: Any) -> None:
    for name in ("initialize", "init_distributed"):
        patching.restore(module, name, _saved)


def _patch(name: str, target: str, description: str, apply, undo) -> Patch:
    return Patch(name=name, framework=FRAMEWORK, versions=VERSIONS, target=target,
                 description=description, apply=apply, undo=undo)


PATCHES = [
    _patch("deepspeed.accelerator", "deepspeed.accelerator.real_accelerator",
           "DeepSpeed accelerator = portkit's active backend (device, RNG, streams, memory, dist_backend)",
           _apply_accelerator, _undo_accelerator),
    _patch("deepspeed.op_builder", "deepspeed.ops.op_builder",
           "op builder names follow the portkit accelerator (portkit Adam where the compiled op is missing)",
           *_rebinder()),
    _patch("deepspeed.fused_adam", "deepspeed.ops.adam.fused_adam",
           "deepspeed.ops.adam.FusedAdam loads portkit's multi-tensor Adam where fused_adam is not built",
           *_rebinder(("FusedAdamBuilder",))),
    _patch("deepspeed.cpu_adam", "deepspeed.ops.adam.cpu_adam",
           "DeepSpeedCPUAdam loads portkit's Adam where cpu_adam is not built",
           *_rebinder(("CPUAdamBuilder",))),
    _patch("deepspeed.accelerator_check", "deepspeed",
           "deepspeed.initialize / init_distributed say so (one line) when DeepSpeed's accelerator is not portkit's",
           _apply_check, _undo_check),
]


# -- entry points for strategies ----------------------------------------------------------
def enable() -> list[Patch]:
    """Apply the DeepSpeed patches (now, or when DeepSpeed is imported)."""
    return patching.enable(FRAMEWORK)


def disable() -> None:
    patching.disable(FRAMEWORK)


def init(backend: str | None = None, init_distributed: bool = True) -> Backend:
    """Select the portkit backend, enable the patches and initialise torch.distributed
    through DeepSpeed with the backend's communication library. Returns the backend."""
    chosen = runtime.select(backend)
    enable()
    if chosen.device_type != "cpu" and "LOCAL_RANK" in os.environ:
        chosen.set_device(int(os.environ["LOCAL_RANK"]))
    if init_distributed:
        import deepspeed
        deepspeed.init_distributed(dist_backend=chosen.dist_backend)
    return chosen
