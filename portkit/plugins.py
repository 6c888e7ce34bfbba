"""Plugin discovery through one entry-point group per kind, and isolated hook calls.

`portkit.backends` names modules that register backends (and may carry their doctor
checks, launch environment, ops for their own device); `portkit.ops` fused-op
implementations; `portkit.patches` framework adapters. A package may register in several
groups. The allow-list PORTKIT_PLUGINS filters the backends group only, so the built-in
kernels and framework adapters stay whatever it names. The plugin name is the entry
point's name in `portkit.backends`, and `<name>.ops` / `<name>.patches` in the others.
"""
from __future__ import annotations

import importlib.metadata
import os
import sys
import traceback
from dataclasses import dataclass, field
from typing import Any

import pluggy

from portkit import hookspecs

BACKENDS_GROUP = "portkit.backends"
GROUPS = (BACKENDS_GROUP, "portkit.ops", "portkit.patches")
ALLOW_ENV = "PORTKIT_PLUGINS"  # comma-separated allow-list of backend entry-point names


@dataclass
class PluginError:
    plugin: str
    stage: str   # 'import' or the hook name
    reason: str


def guarded(call, *args, **kwargs) -> tuple[Any, str | None]:
    """(result, None), or (None, reason) when `call` raised anything but KeyboardInterrupt:
    SystemExit from a plugin's sys.exit() is a plugin failure too, never portkit's exit."""
    try:
        return call(*args, **kwargs), None
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # noqa: BLE001 - a plugin must never take portkit down
        return None, traceback.format_exception_only(type(e), e)[-1].strip()


@dataclass
class Plugins:
    pm: pluggy.PluginManager
    errors: list[PluginError] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)  # plugin name -> distribution
    groups: dict[str, list[str]] = field(default_factory=dict)  # entry-point group -> plugin names loaded

    def call(self, hook: str, **kwargs: Any) -> list[tuple[str, Any]]:
        """Call each implementation of `hook` on its own, so one failure skips only that plugin."""
        results = []
        for impl in getattr(self.pm.hook, hook).get_hookimpls():
            out, failure = guarded(impl.function, **{k: kwargs[k] for k in impl.argnames})
            if failure:  # a broken plugin is reported and skipped
                self.errors.append(PluginError(impl.plugin_name, hook, failure))
                continue
            if out is not None:
                results.append((impl.plugin_name, out))
        return results

    def warn(self, prog: str, since: int = 0) -> None:
        """One line on stderr per plugin that failed (from error number `since` on)."""
        for err in self.errors[since:]:
            print(f"{prog}: plugin {err.plugin!r} failed in {err.stage} and was skipped: {err.reason} "
                  f"(`portkit doctor` lists plugin errors)", file=sys.stderr)

    def call_flat(self, hook: str, **kwargs: Any) -> list[tuple[str, Any]]:
        """Like call, for hooks returning lists: one (plugin, item) pair per item."""
        return [(name, item) for name, out in self.call(hook, **kwargs) for item in out]


def discover(extra: list[tuple[str, object]] = ()) -> Plugins:
    """Load every entry point of the groups (backends filtered by PORTKIT_PLUGINS) and register it."""
    pm = pluggy.PluginManager("portkit")
    pm.add_hookspecs(hookspecs)
    plugins = Plugins(pm)
    allow = {n.strip() for n in os.environ.get(ALLOW_ENV, "").split(",") if n.strip()}
    for group in GROUPS:
        plugins.groups[group] = []
        for ep in sorted(importlib.metadata.entry_points(group=group), key=lambda e: e.name):
            if group != BACKENDS_GROUP or not allow or ep.name in allow:
                register(plugins, group, ep)
    for name, obj in extra:
        pm.register(obj, name=name)
        plugins.sources[name] = "in-process"
    return plugins


def _load(group: str, ep: importlib.metadata.EntryPoint) -> Any:
    obj = ep.load()
    if group != BACKENDS_GROUP and hasattr(obj, "portkit_register_backends"):
        raise TypeError(f"{ep.value} (group {group}) implements portkit_register_backends; backends register "
                        f"only through {BACKENDS_GROUP}, so that {ALLOW_ENV} can filter them: move the hook")
    return obj


def register(plugins: Plugins, group: str, ep: importlib.metadata.EntryPoint) -> None:
    """Load one entry point and register it; a module named by two groups is registered once."""
    pm = plugins.pm
    name = ep.name if group == BACKENDS_GROUP else f"{ep.name}.{group.rsplit('.', 1)[1]}"
    if pm.has_plugin(name):
        plugins.errors.append(PluginError(name, "import", f"entry point name also used by {plugins.sources[name]}"))
        return
    obj, failure = guarded(_load, group, ep)
    if not failure and not pm.is_registered(obj):
        _, failure = guarded(pm.register, obj, name=name)  # hook validation errors name the plugin too
    if failure:
        plugins.errors.append(PluginError(name, "import", failure))
        return
    name = pm.get_name(obj)
    plugins.sources.setdefault(name, ep.dist.name if ep.dist else "?")
    plugins.groups[group].append(name)
