"""Conformance groups `recipe` (a few steps of the tiny recipe through `portkit run`) and
`checkpoint` (the recipe's atomic checkpoint helper on the device)."""
from __future__ import annotations

import importlib.resources
import importlib.util
import json
import math
import sys
from pathlib import Path

import torch

from portkit.conformance.common import Check, Context, attempt, missing, needs_active
from portkit.backend import Backend

RECIPE = "tiny.yaml"


# -- checkpoint ----------------------------------------------------------------------------
def checkpoint(ctx: Context) -> list[Check]:
    blocked = needs_active(ctx)
    if blocked:
        return blocked
    if importlib.util.find_spec("portkit.models.checkpoint") is None:
        return missing("the recipe's checkpoint helper portkit.models.checkpoint (models/checkpoint.py)")
    from portkit.models.checkpoint import Checkpoints
    b = ctx.backend
    model, opt = _trained(b)
    store = Checkpoints(ctx.workdir / "checkpoint")
    state = {"model": model.state_dict(), "optimizer": opt.state_dict()}
    saved = attempt("save model + optimizer on the device", lambda: _save(store, state))
    if not saved.ok:
        return [saved]
    holder: dict = {}
    loaded = attempt("load back with weights_only=True",
                     lambda: holder.update(state=store.load(store.find("conformance"), map_location=b.device())))
    if not loaded.ok:
        return [saved, loaded]
    back = holder["state"]
    return [saved, loaded,
            attempt("every tensor equal after the round trip", lambda: _same(state, back)),
            attempt(f"loaded tensors on {b.device_type}", lambda: _on_device(back, b)),
            attempt("training resumes identically", lambda: _resumes(b, model, opt, back))]


def _model(b: Backend) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 8)).to(b.device())
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2)


def _step(b: Backend, model: torch.nn.Module, opt: torch.optim.Optimizer, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(4, 16, generator=g).to(b.device()), torch.randn(4, 8, generator=g).to(b.device())
    opt.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()
    opt.step()


def _trained(b: Backend) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    b.manual_seed(0)
    model, opt = _model(b)
    for seed in range(2):
        _step(b, model, opt, seed)  # the optimizer now holds state (step, exp_avg, exp_avg_sq)
    return model, opt


def _save(store, state: dict) -> str | None:
    name, digest = store.write_shard("conformance", 2, True, state)
    store.commit("conformance", 2, True, {name: digest}, 0)
    return None if (store.dir / name).exists() else f"{store.dir / name} is absent after the commit"


def _tensors(obj, prefix: str = "") -> dict[str, torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return {prefix: obj}
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    return {k: v for key, val in items for k, v in _tensors(val, f"{prefix}.{key}" if prefix else str(key)).items()}


def _same(a: dict, b: dict) -> str | None:
    ta, tb = _tensors(a), _tensors(b)
    if ta.keys() != tb.keys():
        return f"the loaded state has keys {sorted(set(tb) ^ set(ta))[:5]} that differ from the saved one"
    bad = [k for k in ta if not torch.equal(ta[k].detach().cpu(), tb[k].detach().cpu())]
    return f"tensors differ after loading: {', '.join(bad[:5])}" if bad else None


def _on_device(state: dict, b: Backend) -> str | None:
    params = {k: t for k, t in _tensors(state["model"]).items()}
    off = [f"{k} on {t.device}" for k, t in params.items() if t.device.type != b.device_type]
    return f"map_location={b.device()} left {', '.join(off[:3])}" if off else None


def _resumes(b: Backend, model, opt, state: dict) -> str | None:
    model2, opt2 = _model(b)
    model2.load_state_dict(state["model"])
    opt2.load_state_dict(state["optimizer"])
    _step(b, model, opt, 7)
    _step(b, model2, opt2, 7)
    return _same(model.state_dict(), model2.state_dict())


# -- recipe --------------------------------------------------------------------------------
def recipe(ctx: Context) -> list[Check]:
    blocked = needs_active(ctx)
    if blocked:
        return blocked
    if importlib.util.find_spec("portkit.models.runner") is None:
        return missing("`portkit run` (portkit.models.runner, models/runner.py)")
    path = recipe_path()
    if path is None:
        return missing(f"the tiny recipe models/recipes/{RECIPE}")
    return run_recipe(ctx, path)


def recipe_path() -> Path | None:
    try:
        path = importlib.resources.files("portkit.models") / "recipes" / RECIPE
    except ModuleNotFoundError:
        return None
    return Path(str(path)) if path.is_file() else None


def run_recipe(ctx: Context, path: Path) -> list[Check]:
    from portkit.conformance.multiprocess import run_killable, tail, worker_env
    out = ctx.workdir / "recipe"
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "portkit.cli", "run", str(path), "--backend", ctx.backend.name,
           "--out", str(out / "run"), "--quiet"]
    rc, log = run_killable(cmd, worker_env(ctx), ctx.timeout, out / "log.txt")
    if rc is None:
        return [Check("portkit run finished", False, f"did not finish within {ctx.timeout:.0f} s; log: {tail(log)}")]
    if rc != 0:
        return [Check("portkit run finished", False, f"`{' '.join(cmd[1:])}` exited {rc}: {tail(log)}")]
    run_dir = out / "run"
    return [Check("portkit run finished", True),
            attempt("ran on the backend", lambda: ran_on(run_dir / "report.json", ctx.backend)),
            attempt("every stage logged finite losses", lambda: losses_finite(run_dir / "metrics.jsonl")),
            attempt("SFT loss falls", lambda: sft_falls(run_dir / "metrics.jsonl"))]


def ran_on(report: Path, b: Backend) -> str | None:
    data = json.loads(report.read_text())
    got = (data.get("backend"), str(data.get("device", "")).split(":")[0])
    return None if got == (b.name, b.device_type) else f"{report} says backend/device {got}, expected {(b.name, b.device_type)}"


def _rows(metrics: Path) -> list[dict]:
    return [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]


def losses_finite(metrics: Path) -> str | None:
    rows = _rows(metrics)
    if not rows:
        return f"{metrics} is empty"
    bad = [f"{r.get('stage')} step {r.get('step')}: {r['loss']}" for r in rows
           if isinstance(r.get("loss"), (int, float)) and not math.isfinite(r["loss"])]
    return f"non-finite losses ({', '.join(bad[:3])})" if bad else None


def sft_falls(metrics: Path) -> str | None:
    losses = [r["loss"] for r in _rows(metrics) if r.get("stage") == "sft" and "loss" in r]
    if len(losses) < 2:
        return f"{metrics} has {len(losses)} SFT losses; expected the tiny recipe's steps"
    return None if losses[-1] < losses[0] else f"SFT loss went from {losses[0]:.4f} to {losses[-1]:.4f} (it must fall)"
