"""`portkit doctor`: explain this machine.

Every registered backend (available, or why not), which one would be selected, the
plugins loaded from each entry-point group, the installed frameworks (read from package metadata, never imported), every patch with its
state, the op table, the plugins' own checks, and the plugins that failed to load.
`--json` prints the same report as one JSON object for scripts.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
from typing import Any, Callable

from portkit import runtime
from portkit.backend import Backend
from portkit.plugins import guarded

# distribution -> module it installs; versions come from metadata, nothing is imported.
FRAMEWORKS = {"torch": "torch", "deepspeed": "deepspeed", "colossalai": "colossalai",
              "megatron-core": "megatron.core", "apex": "apex", "triton": "triton",
              "torch-npu": "torch_npu", "torch-mlu": "torch_mlu", "transformers": "transformers",
              "flash-attn-4": "flash_attn.cute"}
KEYS = ("backends", "selected", "plugins", "frameworks", "patches", "ops", "checks", "plugin_errors", "readiness")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    parser.add_argument("--backend", metavar="NAME",
                        help="report on this backend as the selected one (as PORTKIT_BACKEND=NAME would)")


def main(args: argparse.Namespace) -> int:
    report = collect(args.backend)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        render(report)
    return 0


def collect(name: str | None = None) -> dict[str, Any]:
    """The whole report as plain data (JSON-serialisable)."""
    backends = [describe(b) for b in runtime.backends().values()]
    selected, chosen = selection(name)
    report = {"backends": backends, "selected": selected, "plugins": plugin_groups(), "frameworks": frameworks(),
              "patches": patches(), "ops": ops(chosen), "checks": checks(chosen)}
    report["plugin_errors"] = [dataclasses.asdict(e) for e in runtime.plugins().errors]
    report["readiness"] = readiness(chosen)
    return report


def readiness(backend: Backend | None) -> dict[str, list[dict[str, Any]]]:
    """The selected backend's own readiness report (section -> rows), where it offers one
    (a `readiness()` method, e.g. ROCm/DCU); empty elsewhere."""
    fn = getattr(backend, "readiness", None)
    if fn is None:
        return {}
    try:
        return fn()
    except Exception as e:  # a report that fails is shown, never fatal
        return {"readiness": [{"error": f"readiness() raised {type(e).__name__}: {e}"}]}


def describe(backend: Backend) -> dict[str, Any]:
    info, failure = guarded(backend.describe)  # a backend that cannot describe itself is reported, not fatal
    return info if failure is None else {"name": backend.name, "available": False,
                                         "reason": f"describe() raised {failure}"}


def selection(name: str | None) -> tuple[dict[str, Any], Backend | None]:
    """Which backend would run, and how it was chosen; an impossible choice is shown, not raised."""
    if name:
        how = "--backend"
    elif os.environ.get(runtime.BACKEND_ENV):
        how = runtime.BACKEND_ENV
    else:
        how = "highest priority available"
    try:
        chosen = runtime.select(name)
    except runtime.BackendError as e:
        return {"name": None, "how": how, "error": str(e)}, None
    return {"name": chosen.name, "how": how, "error": None}, chosen


def plugin_groups() -> dict[str, dict[str, str]]:
    """Entry-point group -> {plugin loaded from it: its distribution}."""
    p = runtime.plugins()
    return {group: {name: p.sources[name] for name in names} for group, names in p.groups.items()}


def frameworks() -> dict[str, dict[str, Any]]:
    import importlib.metadata
    import importlib.util
    found = {}
    for dist, module in FRAMEWORKS.items():
        try:
            version = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            version = None
        top = module.split(".")[0]
        found[dist] = {"version": version, "module": module,
                       "importable": importlib.util.find_spec(top) is not None}
    return found


def patches() -> list[dict[str, Any]]:
    from portkit import patching
    try:
        registered = patching.all_patches()
    except patching.PatchError as e:  # e.g. two plugins registering the same patch name
        return [{"name": "(registration)", "framework": "-", "versions": "-", "installed": None, "target": "-",
                 "state": "failed", "reason": str(e), "description": "patch registration failed"}]
    rows = []
    for p in registered:
        rows.append({"name": p.name, "framework": p.framework, "versions": p.versions,
                     "installed": patching.framework_version(p.gate or p.framework), "target": p.target,
                     "state": p.state, "reason": p.reason or patching.check_version(p) or "",
                     "description": p.description})
    return rows


def ops(backend: Backend | None) -> dict[str, Any]:
    """The op table on `backend`, or the error that kept it from being built."""
    import portkit.ops  # noqa: F401  (defines the op references)
    from portkit.ops import registry
    if backend is None:
        return {"table": [], "error": "no backend selected"}
    try:
        return {"table": registry.table(backend), "error": None}
    except Exception as e:  # e.g. a plugin's predicate raising: shown in the report
        return {"table": [], "error": f"{type(e).__name__}: {e}"}


def checks(backend: Backend | None) -> list[dict[str, Any]]:
    rows = []
    for plugin, item in runtime.plugins().call_flat("portkit_doctor_checks", backend=backend):
        if not (isinstance(item, dict) and {"name", "ok", "detail"} <= item.keys()):
            item = {"name": "malformed check", "ok": False,
                    "detail": f"expected a dict with name, ok, detail; got {item!r}"}
        rows.append({"plugin": plugin, "name": str(item["name"]), "ok": bool(item["ok"]),
                     "detail": str(item["detail"])})
    return rows


# -- rendering ------------------------------------------------------------------------
def render(report: dict[str, Any]) -> None:
    from rich.console import Console
    console = Console()
    console.print(backends_table(report["backends"]))
    console.print(unavailable_lines(report["backends"]))
    for info in report["backends"]:
        if info.get("available"):
            console.print(details_table(info))
    sel = report["selected"]
    console.print(f"[bold]selected:[/] {sel['name']} ({sel['how']})" if sel["name"]
                  else f"[bold red]selected: none[/] ({sel['how']}): {sel['error']}")
    for title, table in (("plugins", plugins_table(report["plugins"])),
                         ("frameworks", frameworks_table(report["frameworks"])),
                         ("patches", patches_table(report["patches"])),
                         ("ops", ops_table(report["ops"])),
                         ("checks", checks_table(report["checks"])),
                         ("plugin errors", errors_table(report["plugin_errors"]))):
        console.print(table if table is not None else f"[bold]{title}:[/] none")
    for title, rows in report.get("readiness", {}).items():
        console.print(rows_table(f"readiness: {title}", rows))


def rows_table(title: str, rows: list[dict[str, Any]]):
    columns = list(dict.fromkeys(k for r in rows for k in r))
    t = _table(title, *columns)
    for r in rows:
        t.add_row(*[str(r.get(c, "")) for c in columns])
    return t


def _table(title: str, *columns: str):
    from rich.table import Table
    table = Table(title=title, title_justify="left")
    for c in columns:
        table.add_column(c, overflow="fold")
    return table


def backends_table(rows: list[dict[str, Any]]):
    t = _table("backends", "name", "available", "devices", "dist", "visible env", "SMI", "priority")
    for b in rows:
        devices = f"{b['device_count']} x {', '.join(sorted(set(b['devices'])))}" if b.get("devices") else "-"
        smi = f"{b.get('smi_tool') or '-'} ({'found' if b.get('smi_found') else 'absent'})"
        t.add_row(b["name"], "[green]yes[/]" if b["available"] else "[red]no[/]", devices,
                  b.get("dist_backend", "?"), b.get("visible_devices_env") or "-", smi, str(b.get("priority", "?")))
    return t


def unavailable_lines(rows: list[dict[str, Any]]) -> str:
    return "\n".join(f"  [bold]{b['name']}[/] is not available: {b['reason']}" for b in rows if not b["available"])


def details_table(info: dict[str, Any]):
    t = _table(f"backend {info['name']}", "field", "value")
    caps = [k for k, v in (info.get("capabilities") or {}).items() if v]
    t.add_row("versions", ", ".join(f"{k} {v}" for k, v in (info.get("versions") or {}).items()))
    t.add_row("capabilities", ", ".join(caps) or "-")
    t.add_row("peak bf16 TFLOP/s", str(info.get("peak_bf16_tflops")))
    extra = {k: v for k, v in info.items() if k not in _SHOWN}
    for key, value in extra.items():
        t.add_row(key, json.dumps(value, default=str) if isinstance(value, (dict, list)) else str(value))
    return t


_SHOWN = {"name", "available", "reason", "device_type", "dist_backend", "priority", "visible_devices_env",
          "smi_tool", "smi_found", "device_count", "devices", "versions", "capabilities", "peak_bf16_tflops"}


def plugins_table(groups: dict[str, dict[str, str]]):
    t = _table("plugins", "entry-point group", "plugins (distribution)")
    for group, found in groups.items():
        t.add_row(group, ", ".join(f"{name} ({dist})" for name, dist in found.items()) or "-")
    return t


def frameworks_table(found: dict[str, dict[str, Any]]):
    t = _table("frameworks", "distribution", "version", "module")
    for dist, f in found.items():
        t.add_row(dist, f["version"] or "[dim]not installed[/]", f["module"])
    return t


def patches_table(rows: list[dict[str, Any]]):
    return _listing("patches", ("name", "framework (tested; installed)", "state", "reason"), rows, lambda p: (
        p["name"], f"{p['framework']} ({p['versions']}; {p['installed'] or 'absent'})", p["state"], p["reason"]))


def ops_table(ops_: dict[str, Any]):
    if not ops_["table"] and ops_["error"] is not None:
        return f"[bold]ops:[/] {ops_['error']}"
    return _listing("ops", ("op", "selected", "implementations"), ops_["table"],
                    lambda row: (row["op"], row["selected"], ", ".join(row["implementations"])))


def checks_table(rows: list[dict[str, Any]]):
    return _listing("checks", ("plugin", "check", "ok", "detail"), rows, lambda c: (
        c["plugin"], c["name"], "[green]ok[/]" if c["ok"] else "[red]FAIL[/]", c["detail"]))


def errors_table(rows: list[dict[str, Any]]):
    return _listing("plugin errors", ("plugin", "stage", "reason"), rows,
                    lambda e: (e["plugin"], e["stage"], e["reason"]))


def _listing(title: str, columns: tuple[str, ...], rows: list, cells: Callable[[Any], tuple]):
    """A table of one row `cells(item)` per item; None where there are no items (printed as "none")."""
    if not rows:
        return None
    t = _table(title, *columns)
    for item in rows:
        t.add_row(*cells(item))
    return t
