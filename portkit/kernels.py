"""`portkit kernels`: compile every portkit Triton kernel for GPUs this machine may not have.

No GPU or driver needed: the launchers choose each kernel's launch shape for the target and
Triton compiles it (portkit.ops.crosscompile). Prints kernel x target -> registers, spills,
shared memory / LDS and occupancy; exit 1 when a kernel does not compile for a target.
DCU architectures are compiled where the installed Triton supports them (DTK's), else
reported unverified with what would verify them.
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    from portkit.ops.crosscompile import DCU_TARGETS, TARGETS
    names = ", ".join([*TARGETS, *DCU_TARGETS])
    parser.add_argument("--target", help=f"comma-separated targets among {names}; 'dcu' for the DCU ones "
                                         "(default: all)")
    parser.add_argument("--json-out", type=Path, help="write the results as JSON to this file")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown (for docs/rocm.md)")


def main(args: argparse.Namespace) -> int:
    from portkit.ops import crosscompile
    try:
        results = crosscompile.check(crosscompile.check_targets(args.target))
    except (ValueError, RuntimeError) as e:
        print(f"portkit kernels: {e}", file=sys.stderr)
        return 2
    if args.markdown:
        print(markdown(results), end="")
    else:
        render(results)
    if args.json_out:
        write_json(args.json_out, {"meta": meta(), "results": crosscompile.as_dicts(results)})
    failed = crosscompile.failures(results)
    for r in failed:
        print(f"portkit kernels: {r.kernel} does not compile for {r.target}:\n{r.error}", file=sys.stderr)
    return 1 if failed else 0


def meta() -> dict:
    import triton
    return {"command": " ".join(["portkit", *sys.argv[1:]]), "date": datetime.date.today().isoformat(),
            "triton": triton.__version__}


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def cell(r) -> str:
    """One target's cell: regs/spills/LDS/occupancy, or the status."""
    if r.status != "compiled":
        return r.status
    occ = r.occupancy
    return f"{r.regs} / {r.spills} / {r.smem} / {occ['warps']}/{occ['max']}"


def grid(results) -> tuple[list[str], dict[str, dict[str, object]]]:
    """(targets in order, kernel -> target -> Result); unverified targets have no column."""
    shown = [r for r in results if r.status != "unverified"]
    targets = list(dict.fromkeys(r.target for r in shown))
    rows: dict[str, dict[str, object]] = {}
    for r in shown:
        rows.setdefault(r.kernel, {})[r.target] = r
    return targets, rows


def render(results) -> None:
    from rich.console import Console
    from rich.table import Table
    targets, rows = grid(results)
    table = Table(title="portkit kernels: registers / spills / shared-LDS bytes / occupancy "
                        "(warps per SM of 64, or waves per SIMD of 8)", title_justify="left")
    for col in ("kernel (op, shape)", *targets):
        table.add_column(col, overflow="fold")
    for kernel, by_target in rows.items():
        table.add_row(kernel, *[cell(by_target[t]) if t in by_target else "-" for t in targets])
    Console(width=200).print(table)
    for r in results:
        if r.status != "compiled":
            print(f"{r.target}: {r.kernel}: {r.error}")


def markdown(results) -> str:
    targets, rows = grid(results)
    lines = ["| kernel (op, shape) | " + " | ".join(targets) + " |", "|---" * (len(targets) + 1) + "|"]
    for kernel, by_target in rows.items():
        lines.append(f"| {kernel} | " + " | ".join(cell(by_target[t]) if t in by_target else "-"
                                                   for t in targets) + " |")
    notes = [f"- {r.target}: {r.kernel}: {r.error}" for r in results if r.status != "compiled"]
    return "\n".join(lines + [""] + notes) + "\n"
