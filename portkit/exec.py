"""`portkit exec`: run your own CUDA training script unchanged on the active backend.

The script runs in this process (runpy), with the whole adaptation of portkit.adapt active
before its first line: torch.cuda, device 'cuda', autocast/GradScaler and nccl go to the
backend, and DeepSpeed, Colossal-AI, Megatron-core and apex are adapted when the script
imports them. `portkit launch -- script.py` does the same in every torchrun worker.
"""
from __future__ import annotations

import argparse
import os
import runpy
import sys

from portkit import adapt, patching, runtime


def configure(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.description = __doc__.split("\n\n")[1]
    p.epilog = ("examples:\n  portkit exec -- train.py --batch_size 8\n"
                "  portkit exec --backend cpu -- -m mypackage.train\n"
                "  portkit exec --dry-run -- train.py        # what would be adapted\n"
                "  portkit launch --nproc-per-node 4 -- train.py   # the same in every worker")
    p.add_argument("--backend", help="backend name (default: PORTKIT_BACKEND, else the best available)")
    p.add_argument("--dry-run", "--explain", dest="dry_run", action="store_true",
                   help="print what would be adapted for this script and backend; run nothing")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- SCRIPT.py ARGS | -- -m MODULE ARGS")


def main(args) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    problem = _check(command)
    if problem is not None:
        print(f"portkit exec: {problem}", file=sys.stderr)
        return 2
    try:
        if args.dry_run:
            script = command[0] if command[0] != "-m" else None
            print("\n".join(adapt.explain(runtime.select(args.backend), script)))
            return 0
        adapt.activate(args.backend)
    except (runtime.BackendError, patching.PatchError) as e:
        print(f"portkit exec: {e}", file=sys.stderr)
        return 2
    run(command)
    return 0


def _check(command: list[str]) -> str | None:
    if not command:
        return "nothing to run: give -- SCRIPT.py [ARGS] or -- -m MODULE [ARGS]"
    if command[0] == "-m":
        return None if len(command) > 1 else "-m needs a module name"
    if not os.path.isfile(command[0]):
        return f"no such script: {command[0]}"
    return None


def run(command: list[str]) -> None:
    """Run SCRIPT.py ARGS or -m MODULE ARGS as __main__, as `python` would."""
    if command[0] == "-m":
        sys.argv = [command[1], *command[2:]]
        sys.path.insert(0, os.getcwd())
        runpy.run_module(command[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = list(command)
        sys.path.insert(0, os.path.dirname(os.path.abspath(command[0])))
        runpy.run_path(command[0], run_name="__main__")
    runtime.release_process_group()  # one the script left behind
