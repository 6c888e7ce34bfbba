"""One training step of DeepSpeed ZeRO-2 and of a Colossal-AI Booster (LowLevelZero, ZeRO-2)
through portkit's adapters, run by each rank of portkit/conformance/worker.py.

The step is checked against a plain torch AdamW step of the same model on the whole
global batch: ZeRO-2 that reduces, partitions and gathers correctly lands on the same
parameters on every rank.
"""
from __future__ import annotations

import copy
import importlib
import math

import torch
import torch.distributed as dist

from portkit.conformance.common import Check, attempt
from portkit.backend import Backend

BATCH, LR, WD = 8, 1e-2, 0.01
TOL = 1e-5  # relative to the largest parameter


def make_model(b: Backend) -> torch.nn.Module:
    torch.manual_seed(0)  # the same initial weights on every rank
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 4)).to(b.device())


def global_batch(b: Backend) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(BATCH, 16, generator=g).to(b.device()), torch.randn(BATCH, 4, generator=g).to(b.device())


def shard(t: torch.Tensor) -> torch.Tensor:
    rank, world = dist.get_rank(), dist.get_world_size()
    n = t.shape[0] // world
    return t[rank * n:(rank + 1) * n]


def reference_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.nn.Module:
    """The same model after one AdamW step on the whole global batch, without any framework."""
    ref = copy.deepcopy(model)
    opt = torch.optim.AdamW(ref.parameters(), lr=LR, weight_decay=WD)
    torch.nn.functional.mse_loss(ref(x), y).backward()
    opt.step()
    return ref


def same_params(got: torch.nn.Module, want: torch.nn.Module, what: str) -> str | None:
    for (name, p), q in zip(got.named_parameters(), want.parameters()):
        err = (p.detach().float().cpu() - q.detach().float().cpu()).abs().max().item()
        scale = max(q.detach().abs().max().item(), 1e-6)
        if not err <= TOL * scale:
            return (f"after one {what} step parameter {name} differs from a plain AdamW step on the global batch "
                    f"by {err:.3g} (tolerance {TOL * scale:.3g}): gradients are not reduced or gathered correctly")
    return None


# -- DeepSpeed -----------------------------------------------------------------------------
def _framework_checks(b: Backend, framework: str, accelerator, built: str, build, stepped: str,
                      step) -> list[Check]:
    """The shared order of a framework group: adapter init, accelerator, build, one step."""
    patch = importlib.import_module(f"portkit.patches.{framework}")
    checks = [attempt(f"adapter init (portkit.patches.{framework}.init)", lambda: _init(patch, b))]
    if not checks[0].ok:
        return checks
    checks.append(attempt(accelerator[0], lambda: accelerator[1](b)))
    state: dict = {}
    checks.append(attempt(built, lambda: build(b, state)))
    if checks[-1].ok:
        checks.append(attempt(stepped, lambda: step(b, state)))
    return checks


def _init(patch, b: Backend) -> str | None:
    chosen = patch.init(b.name)
    return None if chosen.name == b.name else f"init() selected backend {chosen.name!r}, not {b.name!r}"


def deepspeed_step(b: Backend) -> list[Check]:
    return _framework_checks(b, "deepspeed", ("DeepSpeed accelerator answers for the backend", _ds_accelerator),
                             "ZeRO-2 engine built", _ds_engine,
                             "one ZeRO-2 step equals a plain AdamW step", _ds_step)


def _ds_accelerator(b: Backend) -> str | None:
    from deepspeed.accelerator import get_accelerator
    acc = get_accelerator()
    comm, dev = acc.communication_backend_name(), acc.device_name()
    if comm != b.dist_backend or not str(dev).startswith(b.device_type):
        return (f"DeepSpeed's accelerator {type(acc).__name__} reports device {dev!r} and communication "
                f"{comm!r}; expected {b.device_type!r} and {b.dist_backend!r}")
    return None


def _ds_engine(b: Backend, state: dict) -> str | None:
    import deepspeed
    model = make_model(b)
    state["start"] = copy.deepcopy(model)
    config = {"train_batch_size": BATCH, "train_micro_batch_size_per_gpu": BATCH // dist.get_world_size(),
              "gradient_accumulation_steps": 1, "zero_optimization": {"stage": 2},
              "zero_allow_untested_optimizer": True, "steps_per_print": 1000}
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WD)  # a torch optimizer: nothing compiled
    state["engine"], _, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=config)
    stage = state["engine"].zero_optimization_stage()
    return None if stage == 2 else f"the engine runs ZeRO stage {stage}, not 2"


def _ds_step(b: Backend, state: dict) -> str | None:
    engine = state["engine"]
    x, y = global_batch(b)
    loss = torch.nn.functional.mse_loss(engine(shard(x)), shard(y))
    engine.backward(loss)
    engine.step()
    if not math.isfinite(loss.item()):
        return f"the loss is {loss.item()}"
    return same_params(engine.module, reference_step(state["start"], x, y), "ZeRO-2")


# -- Colossal-AI ---------------------------------------------------------------------------
def colossalai_step(b: Backend) -> list[Check]:
    return _framework_checks(b, "colossalai",
                             ("Colossal-AI accelerator answers for the backend", _clai_accelerator),
                             "Booster with LowLevelZeroPlugin(stage=2) built", _clai_boost,
                             "one ZeRO-2 Booster step equals a plain AdamW step", _clai_step)


def _clai_accelerator(b: Backend) -> str | None:
    from colossalai.accelerator import get_accelerator
    acc = get_accelerator()
    if acc.communication_backend != b.dist_backend or str(acc.get_current_device()).split(":")[0] != b.device_type:
        return (f"Colossal-AI's accelerator {type(acc).__name__} ({acc.name}) reports device "
                f"{acc.get_current_device()} and communication {acc.communication_backend!r}; "
                f"expected {b.device_type!r} and {b.dist_backend!r}")
    return None


def _clai_boost(b: Backend, state: dict) -> str | None:
    from colossalai.booster import Booster
    from colossalai.booster.plugin import LowLevelZeroPlugin
    model = make_model(b)
    state["start"] = copy.deepcopy(model)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WD)
    booster = Booster(plugin=LowLevelZeroPlugin(stage=2, precision="fp32"))
    state["model"], state["opt"], _, _, _ = booster.boost(model, opt)
    state["booster"] = booster
    return None


def _clai_step(b: Backend, state: dict) -> str | None:
    x, y = global_batch(b)
    loss = torch.nn.functional.mse_loss(state["model"](shard(x)), shard(y))
    state["booster"].backward(loss, state["opt"])
    state["opt"].step()
    if not math.isfinite(loss.item()):
        return f"the loss is {loss.item()}"
    return same_params(state["model"].unwrap(), reference_step(state["start"], x, y), "Colossal-AI")
