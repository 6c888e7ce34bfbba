"""Conformance groups that run in 2 processes through torchrun: collectives, deepspeed, colossalai.

Each rank of portkit/conformance/worker.py writes its checks to rank<R>.json; a check
passes when it passes on every rank.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from portkit.conformance.common import Check, Context, missing, needs_active

NPROC = 2


def collectives(ctx: Context) -> list[Check]:
    return needs_active(ctx) or too_few_devices(ctx) or launch(ctx, "collectives")


def deepspeed(ctx: Context) -> list[Check]:
    absent = absent_pieces({"deepspeed": "deepspeed is not installed (pip install deepspeed)",
                            "portkit.patches.deepspeed": "the DeepSpeed adapter portkit.patches.deepspeed"})
    return needs_active(ctx) or absent or too_few_devices(ctx) or launch(ctx, "deepspeed")


def colossalai(ctx: Context) -> list[Check]:
    absent = absent_pieces({"colossalai": "colossalai is not installed (see the README's setup)",
                            "portkit.patches.colossalai": "the Colossal-AI adapter portkit.patches.colossalai"})
    return needs_active(ctx) or absent or too_few_devices(ctx) or launch(ctx, "colossalai")


def absent_pieces(modules: dict[str, str]) -> list[Check] | None:
    for module, what in modules.items():
        if importlib.util.find_spec(module) is None:
            return missing(what, "pieces installed")
    return None


def too_few_devices(ctx: Context) -> list[Check] | None:
    b = ctx.backend
    if b.device_type == "cpu" or b.device_count() >= NPROC:
        return None
    return [Check(f"{NPROC} devices", False, f"{NPROC} processes over {b.dist_backend} need {NPROC} devices, "
                  f"this machine shows {b.device_count()}; run the group on a machine with at least {NPROC}")]


def worker_env(ctx: Context) -> dict[str, str]:
    env = dict(os.environ)
    env.update(ctx.backend.launch_env())
    env.update({"OMP_NUM_THREADS": "1", "PORTKIT_BACKEND": ctx.backend.name, "PYTHONUNBUFFERED": "1"})
    return env


def launch(ctx: Context, group: str) -> list[Check]:
    out = ctx.workdir / group
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={NPROC}",
           "-m", "portkit.conformance.worker", group, str(out)]
    rc, log = run_killable(cmd, worker_env(ctx), ctx.timeout, out / "log.txt")
    if rc is None:
        return [Check("processes finished", False, f"{NPROC} processes did not finish within {ctx.timeout:.0f} s "
                      f"(a collective that hangs?); log: {tail(log)}")]
    ranks = [read_rank(out / f"rank{r}.json") for r in range(NPROC)]
    if any(r is None for r in ranks):
        return [Check("processes finished", False, f"torchrun exited {rc} before every rank reported; "
                      f"log: {tail(log)}")]
    return merge(ranks)


def run_killable(cmd: list[str], env: dict[str, str], timeout: float, log_path: Path) -> tuple[int | None, str]:
    """Run `cmd` in its own process group; on timeout end that group. Returns (rc or None, log)."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = None
    return rc, log_path.read_text(errors="replace")


def read_rank(path: Path) -> list[Check] | None:
    if not path.exists():
        return None
    return [Check(**c) for c in json.loads(path.read_text())]


def merge(ranks: list[list[Check]]) -> list[Check]:
    merged = []
    for i, first in enumerate(ranks[0]):
        failed = [(r, checks[i]) for r, checks in enumerate(ranks) if i < len(checks) and not checks[i].ok]
        reason = "; ".join(f"rank {r}: {c.reason}" for r, c in failed)
        merged.append(Check(first.name, not failed, reason))
    return merged


ERROR_LINE = re.compile(r"^\s*([A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b.*)$")


def tail(log: str, lines: int = 4) -> str:
    """What a failed run says: its last exception line, else its last lines (torchrun's chatter dropped)."""
    errors = [m.group(1) for m in map(ERROR_LINE.match, log.splitlines()) if m and "ChildFailedError" not in m.group(1)]
    if errors:
        return errors[-1][:600]
    keep = [ln.strip() for ln in log.strip().splitlines() if ln.strip() and "torch.distributed" not in ln]
    return " | ".join(keep[-lines:])[:600] or "(empty)"
