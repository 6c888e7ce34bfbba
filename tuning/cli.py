"""`portkit tune`: plan, apply, verify, roll back and export node tuning profiles.

Nothing is changed unless `apply` is given --yes. Every action takes --root DIR (default
/) so it can run on a copy of /proc/sys and /etc. Exit status: 0 all good, 1 a failed or
unverified change, 2 a refused command or an invalid profile.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

from portkit import atomic
from portkit.tuning import engine, profiles
from portkit.tuning.export import FORMATS, export  # the package re-exports the function under the module's name
from portkit.tuning.engine import Change, TuneError
from portkit.tuning.schema import ProfileError


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="tune_action", metavar="ACTION", required=True)
    sub.add_parser("list", help="list the known profiles and where they come from")
    sp = sub.add_parser("validate", help="check profiles (all known ones when none is named)")
    sp.add_argument("profile", nargs="*", help="profile names or .yaml paths")
    sp = _with_profile(sub, "plan", "show current -> wanted for every key; changes nothing")
    sp.add_argument("--json", action="store_true", help="print the plan as JSON")
    sp = _with_profile(sub, "apply", "snapshot, write, verify; rolls everything back on the first failure")
    sp.add_argument("--yes", "--apply", dest="yes", action="store_true", help="really change this machine")
    sp.add_argument("--snapshot-dir", type=Path, help=f"where snapshots go (default ROOT/{engine.SNAPSHOT_DIR})")
    sp = _with_profile(sub, "verify", "exit 1 and list every key not in the wanted state")
    sp.add_argument("--json", action="store_true", help="print the mismatches as JSON")
    sp = sub.add_parser("rollback", help="restore the files recorded in a snapshot, byte for byte")
    sp.add_argument("snapshot", type=Path, help="snapshot JSON written by apply")
    _root(sp)
    sp = _with_profile(sub, "export", "print the profile as sysctl.d, limits.d, env or nccl.conf text")
    sp.add_argument("--format", required=True, choices=FORMATS)
    sp.add_argument("-o", "--output", type=Path, help="write to this file instead of stdout")


def _with_profile(sub, name: str, help_: str) -> argparse.ArgumentParser:
    sp = sub.add_parser(name, help=help_, description=help_)
    sp.add_argument("profile", help="profile name (see `portkit tune list`) or path to a .yaml file")
    _root(sp)
    return sp


def _root(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--root", type=Path, default=Path("/"),
                    help="directory holding proc/sys, etc, sys (default /; a copy for dry runs and tests)")


def main(args: argparse.Namespace) -> int:
    action = {"list": _list, "validate": _validate, "plan": _plan, "apply": _apply,
              "verify": _verify, "rollback": _rollback, "export": _export}[args.tune_action]
    try:
        return action(args)
    except ProfileError as e:
        print(f"portkit tune {args.tune_action}: invalid profile: {e}", file=sys.stderr)
        return 2
    except TuneError as e:
        print(f"portkit tune {args.tune_action}: {e}", file=sys.stderr)
        return 1


def _console():
    from rich.console import Console
    return Console(highlight=False)


def _table(changes: list[Change], title: str):
    from rich.table import Table
    style = {"set": "yellow", "unchanged": "dim", "launch": "cyan"}
    t = Table(title=title, title_justify="left")
    for col in ("kind", "key", "current", "wanted", "action"):
        t.add_column(col, overflow="fold")
    for c in changes:
        action = c.action if c.action != "verify-only" else f"verify-only: {'pass' if c.ok else 'FAIL'}"
        color = style.get(c.action, "green" if c.ok else "red")
        current = "-" if c.action == "launch" else "(unset)" if c.current is None else c.current
        t.add_row(c.kind, c.key, current, c.wanted, f"[{color}]{action}[/]")
    return t


def _plan(args) -> int:
    prof = profiles.load(args.profile)
    changes = engine.plan(prof, args.root)
    if args.json:
        print(json.dumps([dataclasses.asdict(c) for c in changes], indent=1))
        return 0
    n = sum(c.action == "set" for c in changes)
    _console().print(_table(changes, f"portkit tune plan {prof.name} ({' -> '.join(prof.chain)}) root={args.root}"))
    print(f"{n} key(s) to set. `portkit tune apply {args.profile} --root {args.root} --yes` writes them.")
    return 0


def _apply(args) -> int:
    prof = profiles.load(args.profile)
    changes = engine.plan(prof, args.root)
    pending = [c for c in changes if c.action == "set"]
    if not args.yes:
        _console().print(_table(pending, f"would set ({len(pending)})"))
        print(f"portkit tune apply: refused: this changes the machine under {args.root}; re-run with --yes",
              file=sys.stderr)
        return 2
    result = engine.apply(prof, args.root, args.snapshot_dir, fail_at=_fail_at())
    print(f"wrote {len(result.written)} file(s); snapshot: {result.snapshot or '(none, nothing to change)'}")
    return _report(result.mismatches, json_out=False, snapshot=result.snapshot)


def _fail_at() -> int | None:
    raw = os.environ.get(engine.FAIL_ENV)
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise TuneError(f"{engine.FAIL_ENV}={raw!r}: expected a write number >= 1 (a test hook; unset it)")
    return int(raw)


def _verify(args) -> int:
    prof = profiles.load(args.profile)
    return _report(engine.verify(prof, args.root), json_out=args.json)


def _report(mismatches: list[Change], json_out: bool, snapshot: Path | None = None) -> int:
    if json_out:
        print(json.dumps([dataclasses.asdict(c) for c in mismatches], indent=1))
        return 1 if mismatches else 0
    if not mismatches:
        print("verify: every key is in the wanted state")
        return 0
    _console().print(_table(mismatches, f"verify: {len(mismatches)} key(s) not in the wanted state"))
    if any(c.kind == "check" for c in mismatches):
        print("checks are not changed by apply: fix them on the node (kernel command line, sysctl, cpupower).")
    if snapshot:
        print(f"to undo this apply: portkit tune rollback {snapshot}")
    return 1


def _rollback(args) -> int:
    restored = engine.rollback(args.snapshot, args.root)
    print(f"restored {len(restored)} file(s) from {args.snapshot}:")
    for path in restored:
        print(f"  {path}")
    return 0


def _export(args) -> int:
    text = export(profiles.load(args.profile), args.format)
    if args.output:
        atomic.write(args.output, text)
    else:
        sys.stdout.write(text)
    return 0


def _list(args) -> int:
    from portkit import runtime
    plugins = runtime.plugins()
    known = profiles.registry(plugins)
    for name, path in sorted(known.items()):
        desc = profiles.read_layer(path).data.description
        print(f"{name:<16} {desc}  [{path}]")
    for err in (e for e in plugins.errors if e.stage == "portkit_tuning_profiles"):
        print(f"plugin {err.plugin}: {err.reason}", file=sys.stderr)
    return 0


def _validate(args) -> int:
    results = ({ref: _try_load(ref) for ref in args.profile} if args.profile else profiles.validate_all())
    for name, err in results.items():
        print(f"{'ok  ' if err is None else 'FAIL'} {name}" + (f": {err}" if err else ""))
    return 0 if all(e is None for e in results.values()) else 2


def _try_load(ref: str) -> str | None:
    try:
        profiles.load(ref)
    except ProfileError as e:
        return str(e)
    return None
