"""`portkit` command line. Each command lives in its own module exposing
`configure(parser)` and `main(args) -> int`; this file only lists them."""
from __future__ import annotations

import argparse
import importlib
import sys

from portkit.errors import UserError, report

COMMANDS = {  # name -> (module, one-line help)
    "doctor": ("portkit.doctor", "explain this machine: backends, devices, frameworks, patches, ops, plugin errors"),
    "run": ("portkit.models.runner", "run a training recipe (SFT, reward model, PPO) on the best backend"),
    "compare": ("portkit.models.compare", "compare two runs of the same recipe step by step, with a verdict"),
    "bench": ("portkit.bench.cli", "benchmark fused ops or training against native PyTorch on this device"),
    "tune": ("portkit.tuning.cli", "plan, apply, verify, roll back and export OS/TCP/communication tuning"),
    "exec": ("portkit.exec", "run your own CUDA training script unchanged on the active backend"),
    "launch": ("portkit.launch", "launch a recipe over several processes or nodes through torchrun"),
    "plan": ("portkit.plan.cli", "plan parallel layouts and training time of a GPT on a cluster"),
    "new-backend": ("portkit.scaffold.cli", "scaffold an installable backend plugin package"),
    "conformance": ("portkit.conformance.cli", "certify an installed backend: contract, ops, collectives, frameworks"),
    "scan": ("portkit.scan", "report which CUDA-specific uses of a code base portkit adapts and which need work"),
    "kernels": ("portkit.kernels", "compile every portkit Triton kernel for CUDA, ROCm and DCU targets, no GPU needed"),
}


def parser(command: str | None = None) -> argparse.ArgumentParser:
    """The full parser; only `command`'s module is imported and configured (a broken or
    slow command never stands in the way of the others)."""
    p = argparse.ArgumentParser(
        prog="portkit",
        description="Run one training recipe unchanged on CUDA, ROCm/DCU, NPU, MLU, XPU or CPU.",
        epilog="Start with `portkit doctor`, then `portkit run models/recipes/default.yaml`. "
               "`portkit COMMAND --help` explains each command.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.set_defaults(_module=module)
        sp.add_argument("--debug", action="store_true", help="on an error, show the traceback too")
        if name == command:
            importlib.import_module(module).configure(sp)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    args = parser(command).parse_args(argv)
    try:
        return importlib.import_module(args._module).main(args) or 0
    except UserError as e:  # bad input: one message naming file, key and fix; exit 2
        return report(f"portkit {args.command}", e, args.debug)


if __name__ == "__main__":
    sys.exit(main())
