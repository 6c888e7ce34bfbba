"""The active backend and the device-neutral calls everything else uses.

Selection: an explicit name (argument, recipe key, or PORTKIT_BACKEND), else the
available backend with the highest priority. Resolved lazily on first use, so plugins
can import portkit's base classes before any backend is chosen.
"""
from __future__ import annotations

import atexit
import gc
import os
import time

import torch

from portkit.backend import Backend, Capabilities
from portkit.errors import UserError
from portkit.plugins import PluginError, Plugins, discover, guarded

BACKEND_ENV = "PORTKIT_BACKEND"

_plugins: Plugins | None = None
_backends: dict[str, Backend] | None = None
_active: Backend | None = None
_owners: dict[str, str] = {}  # backend name -> the plugin that registered it


class BackendError(UserError, RuntimeError):
    pass


def plugins() -> Plugins:
    global _plugins
    if _plugins is None:
        _plugins = discover()
    return _plugins


def backends() -> dict[str, Backend]:
    """All registered backends by name (instances; availability not yet probed)."""
    global _backends
    if _backends is None:
        _backends = _collect(plugins())
    return _backends


def _collect(p: Plugins) -> dict[str, Backend]:
    found: dict[str, Backend] = {}
    owner: dict[str, str] = {}
    for plugin, cls in p.call_flat("portkit_register_backends"):
        name = getattr(cls, "name", "")
        if not isinstance(cls, type) or not issubclass(cls, Backend) or not name:
            p.errors.append(_error(plugin, f"{cls!r} is not a named portkit.Backend subclass"))
        elif name in found:
            p.errors.append(_error(plugin, f"backend name {name!r} is already registered by plugin "
                                           f"{owner[name]!r}; rename one of them"))
        else:
            found[name], owner[name] = cls(), plugin
    _owners.update(owner)
    return found


def _error(plugin: str, reason: str):
    return PluginError(plugin, "portkit_register_backends", reason)


def availability(backend: Backend) -> str | None:
    """None when `backend` is usable, else why not. A probe() that raises (even SystemExit)
    makes its backend unavailable and is recorded against its plugin, never raised."""
    reason, failure = guarded(backend.probe)
    if failure is None:
        return reason
    plugin = _owners.get(backend.name, backend.name)
    if not any(e.plugin == plugin and e.stage == "probe" for e in plugins().errors):
        plugins().errors.append(PluginError(plugin, "probe", failure))
    return f"probe() raised {failure}"


def select(name: str | None = None) -> Backend:
    """Choose and set up the active backend. An unknown or unavailable name is an error."""
    global _active
    name = name or os.environ.get(BACKEND_ENV) or None
    known = backends()
    if name is not None:
        if name not in known:
            raise BackendError(f"unknown backend {name!r}", key="backend", allowed=", ".join(sorted(known)),
                               fix="pick an installed backend (`portkit doctor` lists them), or install its plugin")
        reason = availability(known[name])
        if reason is not None:
            raise BackendError(f"backend {name!r} is not available here: {reason}")
        chosen = known[name]
    else:
        ready = [b for b in known.values() if availability(b) is None]
        if not ready:
            raise BackendError("no backend is available; run `portkit doctor` to see why")
        chosen = max(ready, key=lambda b: b.priority)
    if chosen is not _active:
        chosen.setup()
        _active = chosen
    return chosen


def active() -> Backend:
    return _active if _active is not None else select()


def reset() -> None:
    """Forget discovery and the active backend (tests, or after installing a plugin)."""
    global _plugins, _backends, _active
    _plugins = _backends = _active = None
    _owners.clear()


# -- the device-neutral API -----------------------------------------------------------
def device(index: int | None = None) -> torch.device:
    return active().device(index)


def dist_backend() -> str:
    return active().dist_backend


def device_count() -> int:
    return active().device_count()


def synchronize() -> None:
    active().synchronize()


def memory_stats() -> dict[str, int]:
    return active().memory_stats()


def manual_seed(seed: int) -> None:
    active().manual_seed(seed)


def capabilities() -> Capabilities:
    return active().capabilities()


def peak_bf16_tflops() -> float | None:
    return active().peak_bf16_tflops()


GLOO_DRAIN_S = 0.05  # portkit/conformance/exit_drain/sitecustomize.py sleeps as long (it cannot import this)


def release_process_group() -> None:
    """Collect cyclic garbage, then destroy the process group if one is left. Framework objects in
    reference cycles (engines, optimizers, a finished script's namespace with its DDP model) can
    hold gloo work and tensors, and their release during interpreter finalization aborts the
    process ('terminate called without an active exception'), also after the script destroyed
    the group itself."""
    gc.collect()
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def release_gloo_at_exit() -> None:
    """Where the process group speaks gloo, have the process, at exit and while the interpreter
    is whole, release_process_group and then sleep GLOO_DRAIN_S; once a process, however many
    groups. The sleep hands gloo's threads the GIL: one still destroying its last finished work,
    whose tensors have Python objects, otherwise waits for the GIL until finalization ends it,
    and the process aborts as above. That ended 13 of 30 runs of the DDP tutorial's two spawned
    workers through `portkit exec` on a 2-core machine (torch 2.13); 0 of 30 with this.
    Called wherever portkit makes a group: the redirected init_process_group
    (patches/torch_cuda.py), the recipe's strategies and the conformance worker."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized() and "gloo" in str(dist.get_backend()):
        atexit.unregister(_release_and_drain)
        atexit.register(_release_and_drain)


def _release_and_drain() -> None:
    release_process_group()
    time.sleep(GLOO_DRAIN_S)
