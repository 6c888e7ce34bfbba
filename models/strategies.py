"""Distribution strategies, named in the recipe; the model code never changes.

Each strategy: setup() (process group through portkit.dist_backend(), device per local
rank), prepare(model, optimizer) -> Engine (backward/step/zero_grad/state_dict/...),
frozen(model) for models that are only evaluated, rank/world, all_reduce_mean of metrics.
Framework strategies load their framework (and portkit's adapter for it) only when chosen.
"""
from __future__ import annotations

import importlib
import os

import torch
import torch.distributed as dist

import portkit


class Engine:
    """A model and its optimizer, trained through `wrapped` (the model itself, or a DDP wrapper)."""

    def __init__(self, module, wrapped, optimizer, clip: float = 1.0):
        self.module, self.wrapped, self.optimizer, self.clip = module, wrapped, optimizer, clip

    def __call__(self, *args, **kwargs):
        return self.wrapped(*args, **kwargs)

    def train(self, mode: bool = True):
        self.wrapped.train(mode)

    def backward(self, loss):
        loss.backward()

    def set_lr(self, lr: float):
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def step(self):
        if self.clip:
            torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def zero_grad(self):
        self.optimizer.zero_grad(set_to_none=True)

    def model_state(self) -> dict:
        return self.module.state_dict()

    def state_dict(self) -> dict:
        return {"model": self.model_state(), "optim": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict):
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optim"])


class Strategy:
    name = "single"
    sharded = False  # True when ranks hold different parts of the model (checkpoint per rank)

    def __init__(self, spec):
        self.spec = spec
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def setup(self) -> None:
        if self.world > 1:
            raise ValueError(f"strategy {self.name!r} runs one process, but WORLD_SIZE={self.world}; "
                             f"set strategy.name: ddp (or another distributed strategy) in the recipe")

    def device(self) -> torch.device:
        return portkit.device()

    def prepare(self, model, optimizer) -> Engine:
        return Engine(model, model, optimizer)

    def frozen(self, model):
        model.requires_grad_(False)
        return model.eval()

    def all_reduce_mean(self, values: dict[str, float]) -> dict[str, float]:
        return dict(values)

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def barrier(self) -> None:
        pass

    def shutdown(self) -> None:
        pass


class _Distributed(Strategy):
    def setup(self) -> None:
        if self.world > 1 and not dist.is_initialized():
            backend = portkit.backend()
            if backend.device_type != "cpu":
                backend.set_device(self.local_rank)
            dist.init_process_group(portkit.dist_backend())

    def all_reduce_mean(self, values):
        if self.world == 1:
            return dict(values)
        keys = sorted(k for k, v in values.items() if v is not None)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=self.device())
        dist.all_reduce(t)
        return {**values, **{k: v / self.world for k, v in zip(keys, t.tolist())}}

    def all_reduce_sum(self, t):
        if self.world > 1:
            dist.all_reduce(t)
        return t

    def barrier(self):
        if self.world > 1:
            dist.barrier()

    def shutdown(self):
        if dist.is_initialized():
            dist.destroy_process_group()


class DDP(_Distributed):
    name = "ddp"

    def prepare(self, model, optimizer):
        if self.world == 1:
            return Engine(model, model, optimizer)
        dev = self.device()
        wrapped = torch.nn.parallel.DistributedDataParallel(model, device_ids=None if dev.type == "cpu" else [dev.index])
        return Engine(model, wrapped, optimizer)


def _adapter(framework: str):
    """portkit's adapter module for a framework, or a clear error naming what is missing."""
    try:
        return importlib.import_module(f"portkit.patches.{framework}")
    except ModuleNotFoundError as e:
        if e.name != f"portkit.patches.{framework}":
            raise
        raise NotImplementedError(f"strategy {framework!r} needs portkit's {framework} adapter "
                                  f"(portkit.patches.{framework}), which is not in this build") from None


STRATEGIES: dict[str, type[Strategy]] = {"single": Strategy, "ddp": DDP}


def build(spec) -> Strategy:
    return STRATEGIES[spec.name](spec)
