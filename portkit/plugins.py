"""Plugin discovery through the entry-point group `portkit.backends` and isolated hook calls."""
from __future__ import annotations

import importlib.metadata
import os
import traceback
from dataclasses import dataclass, field
from typing import Any

import pluggy

from portkit import hookspecs

GROUP = "portkit.backends"
ALLOW_ENV = "PORTKIT_PLUGINS"  # comma-separated allow-list of entry-point names


@dataclass
class PluginError:
    plugin: str
    stage: str   # 'import' or the hook name
    reason: str


@dataclass
class Plugins:
    pm: pluggy.PluginManager
    errors: list[PluginError] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)  # plugin name -> distribution

    def call(self, hook: str, **kwargs: Any) -> list[tuple[str, Any]]:
        """Call each implementation of `hook` on its own, so one failure skips only that plugin."""
        results = []
        for impl in getattr(self.pm.hook, hook).get_hookimpls():
            try:
                out = impl.function(**{k: kwargs[k] for k in impl.argnames})
            except Exception as e:  # a broken plugin is reported and skipped
                self.errors.append(PluginError(impl.plugin_name, hook, f"{type(e).__name__}: {e}"))
                continue
            if out is not None:
                results.append((impl.plugin_name, out))
        return results

    def call_flat(self, hook: str, **kwargs: Any) -> list[tuple[str, Any]]:
        """Like call, for hooks returning lists: one (plugin, item) pair per item."""
        return [(name, item) for name, out in self.call(hook, **kwargs) for item in out]


def discover(extra: list[tuple[str, object]] = ()) -> Plugins:
    """Load every entry point in the group (filtered by PORTKIT_PLUGINS) and register it."""
    pm = pluggy.PluginManager("portkit")
    pm.add_hookspecs(hookspecs)
    plugins = Plugins(pm)
    allow = {n.strip() for n in os.environ.get(ALLOW_ENV, "").split(",") if n.strip()}
    for ep in sorted(importlib.metadata.entry_points(group=GROUP), key=lambda e: e.name):
        if allow and ep.name not in allow:
            continue
        if pm.has_plugin(ep.name):
            plugins.errors.append(PluginError(ep.name, "import", f"entry point name also used by {plugins.sources[ep.name]}"))
            continue
        try:
            obj = ep.load()
            pm.register(obj, name=ep.name)
        except Exception as e:
            detail = traceback.format_exception_only(type(e), e)[-1].strip()
            plugins.errors.append(PluginError(ep.name, "import", detail))
            continue
        plugins.sources[ep.name] = ep.dist.name if ep.dist else "?"
    for name, obj in extra:
        pm.register(obj, name=name)
        plugins.sources[name] = "in-process"
    return plugins
