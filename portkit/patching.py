"""The patch engine: declarative, idempotent, reversible, version-gated framework adapters.

A Patch names the framework distribution and the version range it was tested on, the
module it changes, and apply/undo functions taking that module. `enable(framework)`
applies every patch of that framework: at once when its module is imported, else when
it is imported later. Outside the tested range a patch refuses with the version and range.
A patch may gate on another distribution than the framework it serves (`gate`: the apex
shim gates on torch) and may say it is not needed here (`needed`: state 'skipped', with why).
"""
from __future__ import annotations

import importlib.abc
import importlib.metadata
import importlib.util
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

from packaging.specifiers import SpecifierSet
from packaging.version import Version

from portkit import runtime


class PatchError(RuntimeError):
    pass


@dataclass(eq=False)
class Patch:
    name: str                      # unique, e.g. "deepspeed.accelerator"
    framework: str                 # distribution name, e.g. "deepspeed"
    versions: str                  # tested range(s), e.g. ">=0.19,<0.20" or ">=0.16,<0.17 || >=0.19,<0.20"
    target: str                    # module the patch changes, e.g. "deepspeed.accelerator"
    description: str               # one line for `portkit doctor`
    apply: Callable[[Any], None]   # apply(module)
    undo: Callable[[Any], None]    # undo(module)
    gate: str = ""                 # distribution whose version `versions` gates; default framework
    needed: Callable[[], str | None] | None = None  # None when needed here, else why skipped
    state: str = "registered"      # registered | pending | applied | skipped | refused | failed | undone
    reason: str = ""


@dataclass
class _Engine:
    patches: dict[str, Patch] = field(default_factory=dict)
    loaded: bool = False


_engine = _Engine()


def register(patch: Patch) -> None:
    old = _engine.patches.get(patch.name)
    if old is not None and old is not patch:
        raise PatchError(f"two patches named {patch.name!r} (targets {old.target} and {patch.target}); rename one")
    _engine.patches[patch.name] = patch


def all_patches() -> list[Patch]:
    _load()
    return list(_engine.patches.values())


def _load() -> None:
    if not _engine.loaded:
        _engine.loaded = True
        for _, patch in runtime.plugins().call_flat("portkit_register_patches"):
            register(patch)


def framework_version(framework: str) -> str | None:
    try:
        return importlib.metadata.version(framework)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_version(patch: Patch) -> str | None:
    """None when the installed framework is in the patch's tested range, else why not."""
    dist = patch.gate or patch.framework
    found = framework_version(dist)
    if found is None:
        return f"{dist} is not installed"
    if not in_ranges(found, patch.versions):
        return (f"{dist} {found} is outside the tested range {patch.versions} "
                f"of patch {patch.name!r}; install a version in that range or update the patch")
    return None


def in_ranges(version: str, ranges: str) -> bool:
    """Is `version` in one of the ranges ("A || B", each a PEP 440 specifier set)?"""
    return any(Version(version) in SpecifierSet(r.strip()) for r in ranges.split("||"))


def enable(framework: str, strict: bool = True) -> list[Patch]:
    """Apply every patch for `framework` (now, or when its target is imported)."""
    chosen = [p for p in all_patches() if p.framework == framework]
    for patch in chosen:
        if patch.state in ("applied", "pending"):
            continue
        reason = check_version(patch)
        if reason is not None:
            patch.state, patch.reason = "refused", reason
            if strict:
                raise PatchError(reason)
            continue
        skip = patch.needed() if patch.needed is not None else None
        if skip is not None:
            patch.state, patch.reason = "skipped", skip
            continue
        if patch.target in sys.modules:
            _apply(patch, sys.modules[patch.target])
        else:
            patch.state = "pending"
            _hook.waiting.setdefault(patch.target, []).append(patch)
    return chosen


def disable(framework: str | None = None) -> None:
    """Undo applied patches (all, or one framework's), newest first."""
    for patch in reversed(all_patches()):
        if framework not in (None, patch.framework):
            continue
        if patch.state == "applied":
            patch.undo(sys.modules[patch.target])
            patch.state = "undone"
        elif patch.state == "pending":
            _hook.waiting.get(patch.target, []).remove(patch)
            patch.state = "registered"


def _apply(patch: Patch, module: Any) -> None:
    try:
        patch.apply(module)
    except Exception as e:
        patch.state, patch.reason = "failed", f"{type(e).__name__}: {e}"
        raise PatchError(f"patch {patch.name!r} failed on {patch.target}: {patch.reason}") from e
    patch.state, patch.reason = "applied", ""


def on_import(module_name: str, fn: Callable[[Any], None]) -> None:
    """Call fn(module) once `module_name` is imported: now if it already is, else right after
    its import (a framework's first import by a script, never because it is installed)."""
    if module_name in sys.modules:
        fn(sys.modules[module_name])
    else:
        _hook.callbacks.setdefault(module_name, []).append(fn)


class _PostImportHook(importlib.abc.MetaPathFinder):
    """Runs pending patches, then on_import callbacks, right after their module finishes importing."""

    def __init__(self) -> None:
        self.waiting: dict[str, list[Patch]] = {}
        self.callbacks: dict[str, list[Callable[[Any], None]]] = {}

    def find_spec(self, fullname, path, target=None):
        if not self.waiting.get(fullname) and not self.callbacks.get(fullname):
            return None
        sys.meta_path.remove(self)  # find the real spec without recursing into ourselves
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return None
        exec_module = spec.loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            for patch in self.waiting.pop(fullname, []):
                _apply(patch, module)
            for fn in self.callbacks.pop(fullname, []):
                fn(module)

        spec.loader.exec_module = exec_and_patch
        return spec

_hook = _PostImportHook()
sys.meta_path.insert(0, _hook)


def replace(module: Any, attr: str, new: Any, saved: dict) -> None:
    """Helper for apply(): set module.attr = new, remembering the original in `saved`."""
    saved.setdefault((id(module), attr), getattr(module, attr, None))
    setattr(module, attr, new)


def restore(module: Any, attr: str, saved: dict) -> None:
    """Helper for undo(): put back what `replace` saved."""
    setattr(module, attr, saved.pop((id(module), attr)))
