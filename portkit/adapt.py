"""Existing CUDA training code on the active backend, unchanged: the one mechanism behind
`portkit exec -- script.py`, `portkit launch -- script.py` (in every worker) and
`import portkit.auto`.

torch_npu's `transfer_to_npu` does this for one vendor (torch.cuda -> torch.npu, 'cuda'
devices, nccl -> hccl) and MindSpeed's `megatron_adaptor` for one framework (Megatron
functions replaced when Megatron is imported). `activate()` does both for every backend and
every framework portkit adapts, before the script's first line:

1. CUDA_VISIBLE_DEVICES becomes the backend's visible-devices variable (before its runtime starts);
2. the backend is selected (--backend, PORTKIT_BACKEND, else the best available);
3. torch.cuda.*, device 'cuda', autocast/GradScaler and 'nccl' go to the backend
   (patches/torch_cuda.py; native on CUDA/ROCm, the host stand-in on the CPU);
4. the apex shim answers `import apex` where NVIDIA apex is absent;
5. DeepSpeed, Colossal-AI and Megatron-core are patched when, and only when, the script
   imports them; a framework outside its tested range is named with the ranges instead;
6. workers started with the 'spawn' or 'forkserver' method (torch.multiprocessing.spawn,
   multiprocessing.get_context('spawn').Process) activate the same backend before they
   re-import the script and unpickle their target.

What portkit cannot serve is said in one line on stderr starting with `portkit:`.
"""
from __future__ import annotations

import ast
import functools
import multiprocessing.spawn
import os
import sys
from pathlib import Path
from typing import Callable

from portkit import patching, runtime
from portkit.backend import Backend

CUDA_VISIBLE = "CUDA_VISIBLE_DEVICES"

# Framework distribution -> the module whose import brings in its patches.
LAZY = {"deepspeed": "deepspeed", "colossalai": "colossalai", "megatron-core": "megatron.core"}

_state: dict = {"backend": None, "said": set()}


def warn(message: str) -> None:
    """One line on stderr, once per message: what portkit could not adapt and the fix."""
    if message not in _state["said"]:
        _state["said"].add(message)
        print(f"portkit: {message}", file=sys.stderr, flush=True)


def warned(fn: Callable, check: Callable[[], str | None]) -> Callable:
    """fn that first says check()'s line, if it has one (a framework on another accelerator)."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        problem = check()
        if problem is not None:
            warn(problem)
        return fn(*args, **kwargs)
    return run


def activate(backend: str | None = None) -> Backend:
    """Select the backend and install the whole adaptation (idempotent). Returns the backend."""
    if _state["backend"] is not None:
        return _state["backend"]
    map_visible_devices(_named_backend(backend))
    chosen = runtime.select(backend)
    map_visible_devices(chosen)
    os.environ[runtime.BACKEND_ENV] = chosen.name  # processes the script starts follow it
    patching.enable("torch")
    patching.enable("apex", strict=False)
    for framework, module in LAZY.items():
        _enable_lazily(framework, module)
    _reach_spawned_children(chosen.name)
    _state["backend"] = chosen
    return chosen


# -- workers started by 'spawn' / 'forkserver' --------------------------------------------
# A spawned child is a fresh interpreter: it unpickles the parent's preparation data, runs
# multiprocessing.spawn.prepare() (which re-imports the script as __mp_main__), then unpickles
# its target. One more entry in that data, unpickled first, activates the backend there. This
# reaches exactly the children multiprocessing starts (no sitecustomize on PYTHONPATH, which
# every Python subprocess, compile workers included, would run).
def _reach_spawned_children(backend: str) -> None:
    prepare = multiprocessing.spawn.get_preparation_data
    if getattr(prepare, "__portkit__", False):
        return

    @functools.wraps(prepare)
    def get_preparation_data(name):
        return {**prepare(name), "portkit_backend": _InChild(backend)}
    get_preparation_data.__portkit__ = True
    multiprocessing.spawn.get_preparation_data = get_preparation_data


class _InChild:
    """Unpickled in a spawned child: activates `backend` there."""

    def __init__(self, backend: str) -> None:
        self.backend = backend

    def __reduce__(self):
        return activate_in_child, (self.backend,)


def activate_in_child(backend: str) -> str:
    """activate(backend) in a spawned worker; one `portkit:` line and exit 2 where it cannot."""
    try:
        activate(backend)
    except (runtime.BackendError, patching.PatchError) as e:
        warn(f"a spawned worker could not be adapted to backend {backend!r}: {e}; "
             f"make the backend usable in the worker's environment, or start workers with torchrun "
             f"(portkit launch -- script.py)")
        raise SystemExit(2) from None
    return backend


def active() -> Backend | None:
    """The backend activate() chose, or None when the adaptation is not active."""
    return _state["backend"]


def _named_backend(name: str | None) -> Backend | None:
    name = name or os.environ.get(runtime.BACKEND_ENV)
    return runtime.backends().get(name) if name else None


def map_visible_devices(backend: Backend | None, env=os.environ) -> None:
    """CUDA_VISIBLE_DEVICES -> the backend's variable, unless that one is set already."""
    var = backend.visible_devices_env if backend is not None else None
    if var and var != CUDA_VISIBLE and CUDA_VISIBLE in env and var not in env:
        env[var] = env[CUDA_VISIBLE]


def _enable_lazily(framework: str, module: str) -> None:
    chosen = patching.enable(framework, strict=False)
    refused = next((p.reason for p in chosen if p.state == "refused" and "not installed" not in p.reason), None)
    if refused is not None:
        patching.on_import(module, lambda _: warn(f"{refused.split(' of patch')[0]}; it runs unadapted. "
                                                  f"Install a version in {chosen[0].versions}"))


# -- what `portkit exec --dry-run` prints -------------------------------------------------
def explain(backend: Backend, script: str | None = None) -> list[str]:
    """The adaptations `activate()` would install for `backend` (and what `script` imports)."""
    kind, host = backend.device_type, backend.device_type == "cpu"
    target = "native (torch.cuda is the backend's)" if kind == "cuda" else (
        "the host stand-in (portkit.hostdevice)" if host else f"torch.{kind}")
    lines = [f"backend {backend.name!r}: device type {kind!r}, communication {backend.dist_backend!r}",
             f"  torch.cuda.*                   -> {target}"]
    if kind != "cuda":
        lines += [f"  device 'cuda[:i]', .cuda(), .to('cuda'), device= of factories -> {kind!r}",
                  f"  torch.autocast / torch.amp / torch.cuda.amp (autocast, GradScaler) 'cuda' -> {kind!r}"]
    lines.append(f"  init_process_group / new_group 'nccl' -> {backend.dist_backend!r}")
    if host:
        lines.append("  pin_memory, record_stream -> no-ops; DistributedDataParallel device_ids -> dropped")
    var = backend.visible_devices_env
    if var and var != CUDA_VISIBLE:
        lines.append(f"  {CUDA_VISIBLE} -> {var}")
    lines.append("  workers started by torch.multiprocessing.spawn / a 'spawn' or 'forkserver' context "
                 "-> adapted the same way")
    lines += _framework_lines()
    if script is not None:
        lines.append(f"script imports: {', '.join(script_imports(script)) or '(nothing portkit adapts)'}")
    return lines


def _framework_lines() -> list[str]:
    lines = []
    for framework in [*LAZY, "apex"]:
        patches = [p for p in patching.all_patches() if p.framework == framework]
        reasons = {patching.check_version(p) for p in patches} - {None}
        version = patching.framework_version(framework) or "not installed"
        if framework == "apex":
            lines.append("  apex -> portkit's apex shim (apex.amp / apex.parallel answered with the torch replacement)")
        elif reasons:
            lines.append(f"  {framework} ({version}): not adapted: {sorted(reasons)[0]}")
        else:
            lines.append(f"  {framework} {version}, patched when the script imports it:")
            lines += [f"    {p.name}: {p.description}" for p in patches]
    return lines


def script_imports(path: str) -> list[str]:
    """Top-level packages among torch and the adapted frameworks that `path` imports."""
    tree = ast.parse(Path(path).read_text(), filename=path)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return sorted(names & {"torch", "deepspeed", "colossalai", "megatron", "apex"})
