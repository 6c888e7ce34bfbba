"""`portkit conformance`: certify that an installed backend is complete.

Groups, in order (each a function of the run context returning a list of Checks):
  contract     every member of portkit.Backend present and typed, device calls that work,
               reproducible seeding
  ops          each fused-op implementation registered for the backend against the torch
               reference, forward and backward, on a few shapes
  collectives  all-reduce, all-gather, broadcast, barrier over its dist_backend in 2 processes
  deepspeed    one ZeRO-2 step through portkit's DeepSpeed adapter (2 processes)
  colossalai   one Booster step (LowLevelZero ZeRO-2) through portkit's Colossal-AI adapter (2 processes)
  recipe       a few steps of the tiny recipe through `portkit run --backend NAME`
  checkpoint   model + optimizer state saved on the device by the recipe's atomic helper,
               loaded back with weights_only=True and compared
  unchanged    the CUDA-style scripts of portkit/conformance/scripts (nanoGPT 1 and 2 processes, apex)
               run unchanged through `portkit exec`/`portkit launch`, losses against the scripts
               edited by hand for the CPU; --unchanged-frameworks adds DeepSpeed, Colossal-AI (2
               processes) and Megatron-core TP=2 x PP=2 (4); fewer processes where fewer devices
  kernels      every portkit Triton kernel compiled for CUDA and ROCm targets and the device's
               own architecture, with registers, spills, shared memory and occupancy
A group whose piece of portkit is not installed fails with "missing: <what>", never passes.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from portkit import atomic, runtime
from portkit.conformance.common import Check, Context, describe
from portkit.backend import Backend

GroupFn = Callable[[Context], list[Check]]


def _groups() -> dict[str, GroupFn]:
    from portkit.conformance import contract, kernels, multiprocess, ops, train, unchanged
    return {"contract": contract.run, "ops": ops.run,
            "collectives": multiprocess.collectives, "deepspeed": multiprocess.deepspeed,
            "colossalai": multiprocess.colossalai, "recipe": train.recipe,
            "checkpoint": train.checkpoint, "unchanged": unchanged.unchanged, "kernels": kernels.run}


GROUP_NAMES = ("contract", "ops", "collectives", "deepspeed", "colossalai", "recipe", "checkpoint", "unchanged",
               "kernels")


@dataclasses.dataclass
class GroupResult:
    group: str
    checks: list[Check]
    seconds: float

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)


def run_group(name: str, fn: GroupFn, ctx: Context) -> GroupResult:
    start = time.perf_counter()
    try:
        checks = fn(ctx)
    except Exception as e:  # a crash inside the suite is reported as the group's failure
        checks = [Check("group ran", False, f"conformance group {name!r} crashed: {describe(e)}")]
    if not checks:
        checks = [Check("group ran", False, "the group produced no checks")]
    return GroupResult(name, checks, time.perf_counter() - start)


def find_backend(name: str | None) -> tuple[Backend | None, str | None]:
    """The backend to certify (by name, else the one auto-selection picks), or why there is none."""
    known = runtime.backends()
    if name is None:
        try:
            return runtime.select(), None
        except runtime.BackendError as e:
            return None, str(e)
    if name not in known:
        errors = [f"{e.plugin} ({e.stage}): {e.reason}" for e in runtime.plugins().errors]
        hint = f"; plugin errors: {'; '.join(errors)}" if errors else ""
        return None, (f"no backend named {name!r} is installed (installed: {', '.join(sorted(known))}){hint}. "
                      f"Install the plugin package (pip install -e portkit-{name}) and check `portkit doctor`")
    return known[name], None


def select(backend: Backend) -> str | None:
    try:
        runtime.select(backend.name)
    except Exception as e:  # probe or setup of the backend under test failed
        return describe(e)
    return None


def certify(backend: Backend, groups: list[str], workdir: Path, timeout: float,
            on_result: Callable[[GroupResult], None] = lambda r: None,
            unchanged_frameworks: bool = False) -> list[GroupResult]:
    ctx = Context(backend=backend, workdir=workdir, timeout=timeout, select_error=select(backend),
                  unchanged_frameworks=unchanged_frameworks)
    table = _groups()
    results = []
    for name in groups:
        results.append(run_group(name, table[name], ctx))
        on_result(results[-1])
    return results


def report(backend: Backend, results: list[GroupResult]) -> dict:
    return {"backend": backend.name, "device_type": backend.device_type, "dist_backend": backend.dist_backend,
            "passed": all(r.ok for r in results),
            "groups": {r.group: {"passed": r.ok, "seconds": round(r.seconds, 2),
                                 "checks": [dataclasses.asdict(c) for c in r.checks]} for r in results}}


def print_tables(backend: Backend, results: list[GroupResult], verbose: bool = False) -> None:
    """One table: per group its failed checks with the reason (every check with verbose),
    the passed ones folded into one row; then a summary per group."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table
    console = Console(width=max(Console().width, 120))
    detail = Table(title=f"portkit conformance: backend {backend.name!r} "
                         f"({backend.device_type}, {backend.dist_backend})")
    for col in ("group", "check", "result", "reason"):
        detail.add_column(col, overflow="fold")
    for r in results:
        for i, (check, mark, reason) in enumerate(_rows(r.checks, verbose)):
            detail.add_row(r.group if i == 0 else "", escape(check), mark, escape(reason))
        detail.add_section()
    console.print(detail)
    summary = Table(title="summary")
    for col in ("group", "result", "checks passed", "seconds"):
        summary.add_column(col)
    for r in results:
        summary.add_row(r.group, _mark(r.ok), f"{sum(c.ok for c in r.checks)}/{len(r.checks)}", f"{r.seconds:.1f}")
    console.print(summary)


def _rows(checks: list[Check], verbose: bool) -> list[tuple[str, str, str]]:
    if verbose:
        return [(c.name, _mark(c.ok), c.reason) for c in checks]
    rows = [(c.name, _mark(False), c.reason) for c in checks if not c.ok]
    passed = [c for c in checks if c.ok]
    if len(passed) == 1:
        rows.append((passed[0].name, _mark(True), passed[0].reason))
    elif passed:
        rows.append((f"{len(passed)} checks" + (" (the others)" if rows else ""), _mark(True), ""))
    return rows


def _mark(ok: bool) -> str:
    return "[green]PASS[/green]" if ok else "[red]FAIL[/red]"


def parse_groups(text: str | None) -> list[str]:
    if not text:
        return list(GROUP_NAMES)
    chosen = [g.strip() for g in text.split(",") if g.strip()]
    unknown = [g for g in chosen if g not in GROUP_NAMES]
    if unknown:
        raise ValueError(f"--groups: unknown group(s) {', '.join(unknown)}; choose from {', '.join(GROUP_NAMES)}")
    return chosen


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", help="installed backend to certify (default: the one auto-selection picks)")
    parser.add_argument("--groups", help=f"comma-separated subset of: {', '.join(GROUP_NAMES)} (default: all)")
    parser.add_argument("--json-out", type=Path, help="write the results as JSON to this file")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds allowed to each subprocess (default 600)")
    parser.add_argument("--unchanged-frameworks", action="store_true",
                        help="the unchanged group also runs the DeepSpeed, Colossal-AI and Megatron-core scripts "
                             "(minutes; a framework that is not installed fails as missing)")
    parser.add_argument("--verbose", "-v", action="store_true", help="list every check, not only the failed ones")
    parser.add_argument("--workdir", type=Path, help="keep checkpoints and worker outputs here (default: a temporary folder)")


def main(args: argparse.Namespace) -> int:
    try:
        groups = parse_groups(args.groups)
    except ValueError as e:
        print(f"portkit conformance: {e}", file=sys.stderr)
        return 2
    backend, error = find_backend(args.backend)
    if backend is None:
        print(f"portkit conformance: {error}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="portkit-conformance-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        results = certify(backend, groups, workdir, args.timeout,
                          on_result=lambda r: print(f"{r.group}: {'PASS' if r.ok else 'FAIL'} ({r.seconds:.1f} s)",
                                                    file=sys.stderr, flush=True),
                          unchanged_frameworks=args.unchanged_frameworks)
    print_tables(backend, results, args.verbose)
    data = report(backend, results)
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        atomic.write(args.json_out, json.dumps(data, indent=2) + "\n")
    return 0 if data["passed"] else 1
