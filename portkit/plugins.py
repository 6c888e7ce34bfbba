"""Plugin discovery through the entry-point group `portkit.backends` and isolated hook calls."""
from __future__ import annotations

import importlib.metadata
import os
import sys
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
        _, failure = guarded(lambda: pm.register(ep.load(), name=ep.name))
        if failure:
            plugins.errors.append(PluginError(ep.name, "import", failure))
            continue
        plugins.sources[ep.name] = ep.dist.name if ep.dist else "?"
    for name, obj in extra:
        pm.register(obj, name=name)
        plugins.sources[name] = "in-process"
    return plugins
