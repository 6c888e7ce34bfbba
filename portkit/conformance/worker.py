"""One rank of a multi-process conformance group, started by torchrun.

    python -m torch.distributed.run --standalone --nproc-per-node=2 \
        -m portkit.conformance.worker GROUP OUTDIR

Selects the backend named by PORTKIT_BACKEND, runs the group's checks and writes them to
OUTDIR/rank<RANK>.json. The frameworks are imported only by their own group.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

import portkit
from portkit import atomic
from portkit.conformance.common import Check, attempt, describe
from portkit.backend import Backend

TIMEOUT = timedelta(seconds=120)


def init(b: Backend) -> None:
    if not dist.is_initialized():
        dist.init_process_group(b.dist_backend, timeout=TIMEOUT)
        portkit.runtime.release_gloo_at_exit()


# -- collectives -------------------------------------------------------------------------
def collectives(b: Backend) -> list[Check]:
    checks = [attempt(f"init_process_group({b.dist_backend!r})", lambda: init(b))]
    if not checks[0].ok:
        return checks
    dev, rank, world = b.device(), dist.get_rank(), dist.get_world_size()
    table = [("all_reduce sum", lambda: all_reduce(dev, rank, world)),
             ("all_gather", lambda: all_gather(dev, rank, world)),
             ("broadcast from rank 0", lambda: broadcast(dev, rank)),
             ("barrier", lambda: barrier(b))]
    return checks + [attempt(name, fn) for name, fn in table]


def all_reduce(dev: torch.device, rank: int, world: int) -> str | None:
    t = torch.full((1000,), float(rank + 1), device=dev)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    want = world * (world + 1) / 2
    got = t.cpu()
    return None if torch.all(got == want) else f"all_reduce of rank+1 gave {got[:4].tolist()}..., expected {want}"


def all_gather(dev: torch.device, rank: int, world: int) -> str | None:
    out = [torch.empty(3, device=dev) for _ in range(world)]
    dist.all_gather(out, torch.full((3,), float(rank), device=dev))
    got = [t.cpu().tolist() for t in out]
    want = [[float(r)] * 3 for r in range(world)]
    return None if got == want else f"all_gather of rank gave {got}, expected {want}"


def broadcast(dev: torch.device, rank: int) -> str | None:
    t = torch.arange(5.0, device=dev) + 7 if rank == 0 else torch.zeros(5, device=dev)
    dist.broadcast(t, src=0)
    got = t.cpu().tolist()
    return None if got == [7.0, 8.0, 9.0, 10.0, 11.0] else f"broadcast from rank 0 gave {got}, expected [7.0 ... 11.0]"


def barrier(b: Backend) -> str | None:
    dist.barrier()
    b.synchronize()
    return None


# -- frameworks --------------------------------------------------------------------------
def deepspeed_step(b: Backend) -> list[Check]:
    from portkit.conformance import frameworks
    return frameworks.deepspeed_step(b)


def colossalai_step(b: Backend) -> list[Check]:
    from portkit.conformance import frameworks
    return frameworks.colossalai_step(b)


GROUPS = {"collectives": collectives, "deepspeed": deepspeed_step, "colossalai": colossalai_step}


def run(group: str) -> list[Check]:
    try:
        b = portkit.select_backend(os.environ["PORTKIT_BACKEND"])
        b.set_device(int(os.environ.get("LOCAL_RANK", "0")) % b.device_count())
    except Exception as e:  # the backend itself failed: that is the result
        return [Check("backend selected in the worker", False, describe(e))]
    return GROUPS[group](b)


def main(argv: list[str]) -> int:
    group, out = argv[0], Path(argv[1])
    rank = int(os.environ.get("RANK", "0"))
    checks = run(group)
    atomic.write(out / f"rank{rank}.json", json.dumps([dataclasses.asdict(c) for c in checks]))
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
