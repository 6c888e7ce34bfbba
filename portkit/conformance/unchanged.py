"""Conformance group `unchanged`: the CUDA-style scripts of portkit/conformance/scripts run
unchanged on the backend under test through `portkit exec` / `portkit launch -- script.py`,
their losses compared with the same scripts edited by hand for the CPU and run on plain torch.

Always: nanoGPT train.py in 1 process and with DDP 'nccl' in 2 (in 1 on a machine with one
device), apex fused modules. With `--unchanged-frameworks` also DeepSpeed ZeRO-2, a Colossal-AI
Booster (2 processes) and Megatron-core TP=2 x PP=2 (4) against the same GPT in plain torch; as
many processes as the backend has devices, up to these (minutes on a CPU; a framework that is
not installed fails with "missing: ...").
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import runpy
import sys
from pathlib import Path

import torch

from portkit.conformance.common import Check, Context, needs_active
from portkit.conformance.mcore_reference import mcore_reference
from portkit.conformance.multiprocess import NPROC, run_killable, tail, worker_env

SCRIPTS = Path(__file__).parent / "scripts"
EXIT_DRAIN = Path(__file__).parent / "exit_drain"  # its sitecustomize: gloo's threads finish before exit

# train.py as an engineer edits it for the CPU (the reference of the tests and of this group).
TRAIN_EDITS = [
    ("device = 'cuda'", "device = 'cpu'"),
    ("backend = 'nccl'", "backend = 'gloo'"),
    ("torch.cuda.is_available() and torch.cuda.is_bf16_supported()", "True"),
    ("device = f'cuda:{ddp_local_rank}'", "device = 'cpu'"),
    ("    torch.cuda.set_device(device)\n", ""),
    ("torch.cuda.manual_seed(1337 + seed_offset)\n", ""),
    ("device_type = 'cuda' if 'cuda' in device else 'cpu'", "device_type = 'cpu'"),
    ("    if device_type == 'cuda':", "    if False:"),
    ("x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)", "x, y"),
    ("torch.cuda.amp.GradScaler(", "torch.amp.GradScaler('cpu', "),
    ("DDP(model, device_ids=[ddp_local_rank])", "DDP(model)"),
    ("start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)\n", ""),
    ("    start.record()\n", ""), ("    end.record()\n", ""), ("    torch.cuda.synchronize()\n", ""),
    ('time {start.elapsed_time(end):.2f}ms, "\n              f"mem {torch.cuda.max_memory_allocated() / 2**20:.1f} '
     'MiB on {torch.cuda.get_device_name()}"', '"'),
]

APEX_EDITS = [
    ("from apex.normalization import FusedLayerNorm, FusedRMSNorm\n", ""),
    ("from apex.optimizers import FusedAdam\n", ""),
    ("import scaled_upper_triang_masked_softmax_cuda\n", ""),
    ("        softmax_results = scaled_upper_triang_masked_softmax_cuda.forward(inputs, scale_t[0])\n",
     "        causal = torch.ones(inputs.shape[-2:], dtype=torch.bool).triu(1)\n"
     "        softmax_results = torch.softmax((inputs * scale).masked_fill(causal, float('-inf')), -1)\n"),
    ("        return scaled_upper_triang_masked_softmax_cuda.backward(output_grads, softmax_results, scale_t[0]), None",
     "        y = softmax_results\n"
     "        return scale_t[0] * y * (output_grads - (output_grads * y).sum(-1, keepdim=True)), None"),
    ("FusedLayerNorm(d)", "torch.nn.LayerNorm(d)"), ("FusedRMSNorm(d)", "torch.nn.RMSNorm(d, eps=1e-5)"),
    ("FusedAdam(model.parameters(), lr=1e-2, weight_decay=0.1, adam_w_mode=True)",
     "torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)"),
    ("Block().cuda()", "Block()"), ("torch.randn(4, 16, 32).cuda(), torch.randn(4, 16, 32).cuda()",
                                    "torch.randn(4, 16, 32), torch.randn(4, 16, 32)"),
]


class RunFailed(Exception):
    """A script run did not print its JSON line; the message says why."""


def hand_edited(script: str, edits: list[tuple[str, str]], folder: Path) -> Path:
    """The script as an engineer edits it for the CPU: each edit must apply, and no CUDA
    name may remain, so the copy runs on plain torch without portkit."""
    text = (SCRIPTS / script).read_text()
    for old, new in edits:
        if old not in text:
            raise RunFailed(f"edit of {script} no longer applies: {old!r}")
        text = text.replace(old, new)
    code = "\n".join(line.split("#")[0] for line in text.split('"""', 2)[-1].splitlines())
    left = [w for w in ("torch.cuda", "'cuda", '"cuda', "nccl") if w in code]
    if left:
        raise RunFailed(f"hand-edited {script} still says {left}")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / script).write_text(text)
    return folder / script


def data_parallel_reference(script: str, clip: float = 1.0) -> list[float]:
    """The script's model and batches trained with plain torch AdamW on the whole global batch:
    what a correct data-parallel ZeRO run reproduces (the hand edit of a ZeRO script)."""
    sys.path.insert(0, str(SCRIPTS))  # as `python script` does: the script's folder first, for its imports
    try:
        ns = runpy.run_path(str(SCRIPTS / script), run_name="reference")  # imports the framework
    finally:
        sys.path.remove(str(SCRIPTS))
    model = ns["build_model"]()
    opt = torch.optim.AdamW(model.parameters(), lr=ns["LR"], weight_decay=0.01)
    losses = []
    for x, y in ns["batches"]():
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        losses.append(loss.item())
    return losses


def same_losses(got: list[float], want: list[float], rel: float) -> str | None:
    if len(got) != len(want) or not got:
        return f"{len(got)} losses through portkit, {len(want)} in the reference"
    bad = [(i, a, b) for i, (a, b) in enumerate(zip(got, want)) if abs(a - b) > rel * abs(b)]
    return None if not bad else "step {}: loss {:.6g} through portkit vs {:.6g} in the reference (rel {:g})".format(
        *bad[0], rel)


def world_size(ctx: Context, wanted: int = NPROC) -> int:
    """Processes of a multi-process script: `wanted` on a CPU device (they share the host), else
    one per device up to `wanted`; a world of 1 still sends init_process_group('nccl') to the
    backend's communication library."""
    b = ctx.backend
    return wanted if b.device_type == "cpu" else max(1, min(wanted, b.device_count()))


def processes(n: int) -> str:
    return f"{n} process" + ("es" if n > 1 else "")


def portkit_cmd(ctx: Context, script: str, *args: str, nproc: int | None = None) -> list[str]:
    """`portkit exec` of a packaged script on the backend, or `portkit launch` in `nproc` processes."""
    head = ["exec"] if nproc is None else ["launch", "--nproc-per-node", str(nproc)]
    return [sys.executable, "-m", "portkit.cli", *head, "--backend", ctx.backend.name, "--", str(SCRIPTS / script), *args]


def plain_cmd(path: Path, *args: str, nproc: int | None = None) -> list[str]:
    if nproc is None:
        return [sys.executable, str(path), *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", str(path), *args]


def plain_env(env: dict[str, str]) -> dict[str, str]:
    """env for a plain-torch reference: EXIT_DRAIN first on PYTHONPATH."""
    return {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(EXIT_DRAIN), env.get("PYTHONPATH")]))}


def losses_of(ctx: Context, cmd: list[str], log: Path, plain: bool = False) -> list[float]:
    rc, text = run_killable(cmd, plain_env(worker_env(ctx)) if plain else worker_env(ctx), ctx.timeout, log)
    lines = [line for line in text.splitlines() if line.startswith("{")]
    if rc != 0 or not lines:
        why = "did not finish within {:.0f} s".format(ctx.timeout) if rc is None else f"exited {rc}"
        raise RunFailed(f"{' '.join(cmd[1:])} {why}: {tail(text)}")
    return json.loads(lines[-1])["losses"]


def reference_losses(ctx: Context, cmd: list[str], log: Path) -> list[float]:
    """Losses of the plain-torch reference, with EXIT_DRAIN, run up to three times while it
    fails: without the drain, two gloo processes sharing two loaded cores aborted at exit now
    and then (SIGABRT, torch alone; twice in a row once). The backend's side is never run twice."""
    for attempt in range(3):
        try:
            return losses_of(ctx, cmd, log.with_suffix(f".again{attempt}.log") if attempt else log, plain=True)
        except RunFailed:
            if attempt == 2:
                raise


def compare(ctx: Context, name: str, got_cmd: list[str], want, rel: float) -> Check:
    """One check: losses of `got_cmd` against `want()` (a command or a function giving losses)."""
    folder = ctx.workdir / "unchanged" / re.sub(r"\W+", "_", name)[:48]
    folder.mkdir(parents=True, exist_ok=True)
    try:
        got = losses_of(ctx, got_cmd, folder / "portkit.log")
        reference = want() if callable(want) else reference_losses(ctx, want, folder / "reference.log")
    except RunFailed as e:
        return Check(name, False, str(e))
    reason = same_losses(got, reference, rel)
    return Check(name, reason is None, reason or "")


def unchanged(ctx: Context) -> list[Check]:
    blocked = needs_active(ctx)
    if blocked:
        return blocked
    # On a CPU the reference computes the same numbers; an accelerator's kernels differ in rounding.
    rel = 1e-4 if ctx.backend.device_type == "cpu" else 2e-2
    edited = ctx.workdir / "unchanged" / "edited"
    try:
        train, apex = hand_edited("train.py", TRAIN_EDITS, edited), hand_edited("apex_train.py", APEX_EDITS, edited)
    except RunFailed as e:
        return [Check("scripts edited for the reference", False, str(e))]
    checks = [compare(ctx, "train.py (nanoGPT) through portkit exec", portkit_cmd(ctx, "train.py"),
                      plain_cmd(train), rel),
              compare(ctx, "apex_train.py (apex fused modules) through portkit exec",
                      portkit_cmd(ctx, "apex_train.py"), plain_cmd(apex), rel),
              ddp(ctx, train, rel)]
    return checks + (framework_checks(ctx, rel) if ctx.unchanged_frameworks else [])


def ddp(ctx: Context, train: Path, rel: float) -> Check:
    n = world_size(ctx)
    return compare(ctx, f"train.py DDP 'nccl' through portkit launch ({processes(n)})",
                   portkit_cmd(ctx, "train.py", nproc=n), plain_cmd(train, nproc=n), rel)


def megatron_layout(world: int) -> tuple[int, int]:
    """(TP, PP) of the Megatron-core script for up to `world` processes: 2 x 2 at 4."""
    return min(2, world), 2 if world >= 4 else 1


def framework_checks(ctx: Context, rel: float) -> list[Check]:
    """DeepSpeed, Colossal-AI, Megatron-core scripts; asked for, a framework that is not installed
    fails with "missing: ..." like every group."""
    n, (tp, pp) = world_size(ctx), megatron_layout(world_size(ctx, 4))
    ds_config = str(SCRIPTS / "ds_config_zero2.json")
    runs = {"deepspeed": (f"ds_train.py (DeepSpeed ZeRO-2) through portkit launch ({processes(n)})",
                          portkit_cmd(ctx, "ds_train.py", "--deepspeed_config", ds_config, nproc=n),
                          lambda: data_parallel_reference("ds_train.py"),
                          "deepspeed is not installed (pip install portkit[frameworks])"),
            "colossalai": (f"colo_train.py (Colossal-AI TorchDDP) through portkit launch ({processes(n)})",
                           portkit_cmd(ctx, "colo_train.py", "--plugin", "torch_ddp", nproc=n),
                           lambda: data_parallel_reference("colo_train.py", clip=float("inf")),
                           "colossalai is not installed (see the README's setup)"),
            "megatron": (f"mcore_gpt.py (Megatron-core TP={tp} x PP={pp}) through portkit launch ({processes(tp * pp)})",
                         portkit_cmd(ctx, "mcore_gpt.py", "--tp", str(tp), "--pp", str(pp), nproc=tp * pp),
                         lambda: mcore_reference(SCRIPTS / "mcore_gpt.py"),
                         "megatron-core is not installed (pip install portkit[frameworks])")}
    checks = []
    for module, (name, cmd, want, absent) in runs.items():
        if importlib.util.find_spec(module) is None:
            checks.append(Check(name, False, f"missing: {absent}"))
        else:
            checks.append(compare(ctx, name, cmd, want, rel))
    return checks
