"""`portkit launch`: run a recipe or script over several processes and nodes through torchrun.

portkit writes no launcher of its own: it builds the argument list of
`python -m torch.distributed.run` and the environment of the active backend (visible devices,
PORTKIT_BACKEND, the backend's communication defaults, what plugins add through
`portkit_launch_env`, and a tuning profile's variables), reads Slurm's variables when the job
runs under Slurm, checks the tensor/pipeline layout against the node size and prints it.

Ranks are ordered tensor-parallel fastest, then data-parallel, then pipeline (Megatron's
order): a TP group is nproc_per_node-aligned, so it never leaves a node, and pipeline stages
are the outermost split, so they are what crosses nodes.
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import Mapping

from portkit.errors import UserError

DEFAULT_PORT = 29500


class LaunchError(UserError, ValueError):
    pass


# -- rank layout ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RankPlace:
    rank: int
    node: int
    local_rank: int
    tp: int
    dp: int
    pp: int


def rank_layout(world_size: int, nproc_per_node: int, tp: int = 1, pp: int = 1) -> list[RankPlace]:
    """Where each global rank sits: rank = tp_rank + tp * (dp_rank + dp * pp_rank)."""
    if min(world_size, nproc_per_node, tp, pp) < 1:
        raise LaunchError(f"sizes must be positive: world {world_size}, per node {nproc_per_node}, tp {tp}, pp {pp}")
    if world_size % nproc_per_node:
        raise LaunchError(f"world size {world_size} is not a whole number of nodes of {nproc_per_node} processes")
    if nproc_per_node % tp:
        raise LaunchError(f"tensor-parallel size {tp} does not divide the {nproc_per_node} processes per node, "
                          f"so a TP group would span nodes; choose tp from {divisors(nproc_per_node)}")
    if world_size % (tp * pp):
        raise LaunchError(f"world size {world_size} is not divisible by tp*pp = {tp}*{pp}; "
                          f"the data-parallel size must be a whole number")
    dp = world_size // (tp * pp)
    return [RankPlace(r, r // nproc_per_node, r % nproc_per_node, r % tp, (r // tp) % dp, r // (tp * dp))
            for r in range(world_size)]


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def layout_table(places: list[RankPlace], limit: int = 32) -> str:
    """The layout as text: one line per rank (the first `limit`), then the group sizes."""
    tp = max(p.tp for p in places) + 1
    pp = max(p.pp for p in places) + 1
    dp = len(places) // (tp * pp)
    lines = [f"rank layout: world {len(places)} = tp {tp} x dp {dp} x pp {pp}",
             " rank  node  local  tp  dp  pp"]
    lines += [f"{p.rank:5} {p.node:5} {p.local_rank:6} {p.tp:3} {p.dp:3} {p.pp:3}" for p in places[:limit]]
    if len(places) > limit:
        lines.append(f"  ... {len(places) - limit} more ranks")
    nodes_per_stage = sorted({len({q.node for q in places if q.pp == s}) for s in range(pp)})
    lines.append(f"each TP group on 1 node; each pipeline stage on {'/'.join(map(str, nodes_per_stage))} node(s)")
    return "\n".join(lines)


# -- Slurm ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SlurmJob:
    nnodes: int
    node_rank: int
    first_host: str
    job_id: str
    nproc_per_node: int | None


def expand_nodelist(spec: str) -> list[str]:
    """Expand Slurm's simple host-list forms: 'a,b', 'node[01-04,07]', 'gpu[1-2],cpu5'."""
    hosts = []
    for prefix, ranges, plain in re.findall(r"([^,\[]+)\[([^\]]+)\]|([^,\[\]]+)", spec):
        if plain:
            hosts.append(plain)
            continue
        for part in ranges.split(","):
            lo, _, hi = part.partition("-")
            if not lo.isdigit() or (hi and not hi.isdigit()):
                raise LaunchError(f"cannot read Slurm node list {spec!r} at {part!r}; "
                                  "set --rdzv-endpoint HOST:PORT instead")
            hosts += [f"{prefix}{i:0{len(lo)}d}" for i in range(int(lo), int(hi or lo) + 1)]
    if not hosts:
        raise LaunchError(f"empty Slurm node list {spec!r}")
    return hosts


def first_host(nodelist: str) -> str:
    """The first host of the allocation: `scontrol show hostnames` when present, else our parser."""
    scontrol = shutil.which("scontrol")
    if scontrol:
        done = subprocess.run([scontrol, "show", "hostnames", nodelist], capture_output=True, text=True,
                              timeout=30, check=False)
        if done.returncode == 0 and done.stdout.split():
            return done.stdout.split()[0]
        raise LaunchError(f"`scontrol show hostnames {nodelist}` failed: {done.stderr.strip() or done.returncode}")
    return expand_nodelist(nodelist)[0]


def slurm_job(env: Mapping[str, str]) -> SlurmJob | None:
    """Read the Slurm allocation from the environment; None outside Slurm."""
    if "SLURM_JOB_ID" not in env or "SLURM_NNODES" not in env:
        return None
    if int(env.get("SLURM_LOCALID", "0")) != 0:
        raise LaunchError(f"SLURM_LOCALID={env['SLURM_LOCALID']}: portkit launch starts all processes of a node "
                          "itself; run one task per node (srun --ntasks-per-node=1 portkit launch ...)")
    per_node = env.get("SLURM_GPUS_ON_NODE") or env.get("SLURM_NTASKS_PER_NODE", "").split("(")[0] or None
    return SlurmJob(nnodes=int(env["SLURM_NNODES"]), node_rank=int(env.get("SLURM_NODEID", "0")),
                    first_host=first_host(env["SLURM_JOB_NODELIST"]) if "SLURM_JOB_NODELIST" in env else "",
                    job_id=env["SLURM_JOB_ID"], nproc_per_node=int(per_node) if per_node else None)


# -- torchrun arguments -----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Topology:
    nnodes: int
    nproc_per_node: int
    node_rank: int
    rdzv_endpoint: str | None   # None: a single node, torchrun --standalone
    rdzv_id: str


def topology(args, backend, env: Mapping[str, str]) -> Topology:
    """Flags first, then Slurm, then the backend's device count."""
    job = slurm_job(env)
    nnodes = args.nnodes or (job.nnodes if job else 1)
    nproc = args.nproc_per_node or (job.nproc_per_node if job else None) or backend.device_count()
    endpoint = args.rdzv_endpoint or (f"{job.first_host}:{DEFAULT_PORT}" if job and job.first_host else None)
    if nnodes > 1 and not endpoint:
        raise LaunchError(f"{nnodes} nodes need a rendezvous: give --rdzv-endpoint HOST:PORT "
                          "(the first node's address), or run under Slurm")
    return Topology(nnodes, nproc, job.node_rank if job else 0,
                    endpoint if nnodes > 1 or args.rdzv_endpoint else None,
                    args.rdzv_id or (job.job_id if job else "portkit"))


def program(command: list[str]) -> list[str]:
    """What each process runs: a recipe through `portkit run`, or a script / `-m module`
    through `portkit exec` (the same adaptation as a single process, in every worker)."""
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise LaunchError("nothing to launch: give RECIPE.yaml, or -- SCRIPT.py [ARGS], or -- -m MODULE [ARGS]")
    first = command[0]
    if first.endswith((".yaml", ".yml")):
        return ["-m", "portkit.cli", "run", *command]
    if first == "-m" or first.endswith(".py"):
        return ["-m", "portkit.cli", "exec", "--", *command]
    raise LaunchError(f"cannot launch {first!r}: expected a recipe (.yaml), a script (.py) or -m MODULE")


def torchrun_argv(topo: Topology, prog: list[str], rdzv_backend: str = "c10d") -> list[str]:
    argv = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(topo.nnodes),
            "--nproc-per-node", str(topo.nproc_per_node)]
    if topo.rdzv_endpoint is None:
        argv.append("--standalone")
    else:
        argv += ["--rdzv-backend", rdzv_backend, "--rdzv-endpoint", topo.rdzv_endpoint, "--rdzv-id", topo.rdzv_id]
    return argv + prog


# -- environment ------------------------------------------------------------------------
def launch_env(backend, devices: str | None, tune_profile: str | None,
               shell: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """Variables to add, and the names of defaults left as the shell already set them.

    Defaults (the backend's communication environment, plugin additions) yield to the shell;
    what was asked for explicitly (backend, devices, tuning profile) is always set."""
    defaults = dict(backend.launch_env())
    for _, extra in plugin_env(backend, defaults):
        defaults.update({str(k): str(v) for k, v in extra.items()})
    kept = sorted(k for k in defaults if k in shell and shell[k] != defaults[k])
    env = {k: v for k, v in defaults.items() if k not in kept}
    env["PORTKIT_BACKEND"] = backend.name
    if devices is not None:
        env[visible_devices_var(backend)] = devices
    if tune_profile is not None:
        env.update(tuning_env(tune_profile))
    return env, kept


def plugin_env(backend, env: dict) -> list[tuple[str, dict]]:
    from portkit import runtime
    p = runtime.plugins()
    before = len(p.errors)
    out = p.call("portkit_launch_env", backend=backend, env=dict(env))
    p.warn("portkit launch", since=before)
    return out


def visible_devices_var(backend) -> str:
    if not backend.visible_devices_env:
        raise LaunchError(f"backend {backend.name!r} has no visible-devices variable; drop --devices")
    return backend.visible_devices_env


def tuning_env(name: str) -> dict[str, str]:
    from portkit.tuning import launch_env
    return {str(k): str(v) for k, v in launch_env(name).items()}


# -- command ----------------------------------------------------------------------------
def configure(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.description = __doc__.split("\n\n")[1]
    p.epilog = ("examples:\n  portkit launch --nproc-per-node 8 --tp 2 models/recipes/default.yaml\n"
                "  portkit launch --nnodes 2 --nproc-per-node 8 --rdzv-endpoint node01:29500 -- train.py --lr 3e-4\n"
                "  srun --ntasks-per-node=1 portkit launch --tp 8 --pp 4 recipe.yaml   # sizes from Slurm")
    p.add_argument("--nnodes", type=int, help="nodes (default: SLURM_NNODES, else 1)")
    p.add_argument("--nproc-per-node", type=int, help="processes per node (default: SLURM_GPUS_ON_NODE, "
                   "SLURM_NTASKS_PER_NODE, else the backend's device count)")
    p.add_argument("--rdzv-endpoint", help="HOST:PORT of the rendezvous (default: first Slurm host:29500)")
    p.add_argument("--rdzv-backend", default="c10d", help="torchrun rendezvous backend (default c10d)")
    p.add_argument("--rdzv-id", help="job id shared by all nodes (default: SLURM_JOB_ID, else 'portkit')")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel size, kept inside a node (default 1)")
    p.add_argument("--pp", type=int, default=1, help="pipeline-parallel size, across nodes (default 1)")
    p.add_argument("--backend", help="backend name (default: PORTKIT_BACKEND, else the best available)")
    p.add_argument("--devices", help="device ids visible to the job, e.g. 0,1,2,3")
    p.add_argument("--tune-profile", metavar="NAME", help="export this tuning profile's environment")
    p.add_argument("--dry-run", action="store_true", help="print the layout, command and environment; run nothing")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="RECIPE.yaml | -- SCRIPT.py ARGS | -- -m MODULE ARGS")


def build(args, shell: Mapping[str, str]) -> tuple[list[str], dict[str, str], list[str], str]:
    """argv, environment additions, shell-kept names and the layout table of one launch."""
    from portkit import runtime
    backend = runtime.select(args.backend)
    topo = topology(args, backend, shell)
    places = rank_layout(topo.nnodes * topo.nproc_per_node, topo.nproc_per_node, args.tp, args.pp)
    env, kept = launch_env(backend, args.devices, args.tune_profile, shell)
    if args.devices is not None and len(args.devices.split(",")) < topo.nproc_per_node:
        raise LaunchError(f"--devices {args.devices} names fewer devices than --nproc-per-node {topo.nproc_per_node}")
    return torchrun_argv(topo, program(args.command), args.rdzv_backend), env, kept, layout_table(places)


def main(args) -> int:
    from portkit.runtime import BackendError
    try:
        argv, env, kept, table = build(args, os.environ)
    except (LaunchError, BackendError, ValueError) as e:
        print(f"portkit launch: {e}", file=sys.stderr)
        return 2
    print(table)
    print("environment:", " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(env.items())) or "(nothing added)")
    if kept:
        print("kept from your shell:", ", ".join(kept))
    print("command:", shlex.join(argv), flush=True)
    if args.dry_run:
        return 0
    from portkit import lifetime  # the workers die with the torchrun agent (lifetime.bind_to_parent)
    rc = subprocess.run(argv, env={**os.environ, **env, lifetime.ENV: "1"}, check=False).returncode
    if rc < 0:
        print(f"portkit launch: torchrun ended by signal {-rc}; its workers ended with it", file=sys.stderr)
    return 128 - rc if rc < 0 else rc
