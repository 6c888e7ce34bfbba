"""Distribution strategies, named in the recipe; the model code never changes.

Each strategy: setup() (process group through portkit.dist_backend(), device per local
rank), prepare(model, optimizer) -> Engine (backward/step/zero_grad/state_dict/...),
frozen(model) for models that are only evaluated, rank/world, all_reduce_mean of metrics.
Framework strategies load their framework (and portkit's adapter for it) only when chosen.
"""
from __future__ import annotations

import contextlib
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
    sharded = False   # True when ranks hold different parts of the model (checkpoint per rank)
    lockstep = False  # True when every forward is a collective (ZeRO-3): no per-rank early stop

    def __init__(self, spec):
        self.spec = spec
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.dp_world, self.dp_rank = self.world, self.rank  # data-parallel split of each batch

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def setup(self) -> None:
        if self.world > 1:
            raise ValueError(f"strategy {self.name!r} runs one process, but WORLD_SIZE={self.world}; "
                             f"set strategy.name: ddp (or another distributed strategy) in the recipe")

    def device(self) -> torch.device:
        return portkit.device()

    def parallelize(self, model):
        """Applied to every model right after it is built (tensor parallelism); default: as is."""
        return model

    def prepare(self, model, optimizer) -> Engine:
        return Engine(model, model, optimizer)

    def gather_files(self, files: dict[str, str]) -> dict[str, str]:
        return files

    def gathered(self, model):
        """Context in which the model's full parameters are present (generation); default: always."""
        return contextlib.nullcontext()

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
            portkit.runtime.release_gloo_at_exit()

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

    def gather_files(self, files):
        if self.world == 1:
            return files
        parts = [None] * self.world
        dist.all_gather_object(parts, files)
        return {k: v for p in parts for k, v in p.items()}

    def shutdown(self):
        portkit.runtime.release_process_group()


class DDP(_Distributed):
    name = "ddp"

    def prepare(self, model, optimizer):
        if self.world == 1:
            return Engine(model, model, optimizer)
        dev = self.device()
        wrapped = torch.nn.parallel.DistributedDataParallel(model, device_ids=None if dev.type == "cpu" else [dev.index])
        return Engine(model, wrapped, optimizer)


class DeepSpeedEngine(Engine):
    def backward(self, loss):
        self.wrapped.backward(loss)

    def step(self):
        self.wrapped.step()  # clips (gradient_clipping), steps and zeroes the gradients

    def zero_grad(self):
        self.wrapped.zero_grad()

    def model_state(self):
        import deepspeed
        params = list(self.module.parameters())
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None, enabled=self.stage == 3):
            return {k: v.detach().clone() for k, v in self.module.state_dict().items()}

    def state_dict(self):
        raise NotImplementedError("in-stage checkpoints under DeepSpeed ZeRO are not supported yet: the ZeRO "
                                  "optimizer state holds objects torch.load(weights_only=True) refuses; set "
                                  "checkpoint_every above the stage lengths (stage-end checkpoints work)")

    def load_state_dict(self, state):
        self.state_dict()


class DeepSpeed(_Distributed):
    """ZeRO stage 1/2/3 through deepspeed.initialize, on portkit's DeepSpeed adapter."""
    name = "deepspeed"

    def setup(self):
        from portkit.patches import deepspeed as adapter
        adapter.init(backend=portkit.backend().name)

    def prepare(self, model, optimizer):
        import deepspeed
        cfg = {"train_batch_size": self.world, "train_micro_batch_size_per_gpu": 1, "gradient_clipping": 1.0,
               "zero_optimization": {"stage": self.spec.zero_stage}, "zero_allow_untested_optimizer": True,
               "steps_per_print": 1 << 30}
        engine, opt, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=cfg)
        out = DeepSpeedEngine(model, engine, opt)
        out.stage = self.spec.zero_stage
        return out

    @property
    def lockstep(self):
        return self.spec.zero_stage == 3

    def gathered(self, model):
        import deepspeed
        return deepspeed.zero.GatheredParameters(list(model.parameters()), enabled=self.spec.zero_stage == 3)


class Megatron(_Distributed):
    """Megatron-core tensor parallelism: attention heads and MLP columns split over `tp`
    ranks with Megatron's own communication regions; data parallel over world / tp."""
    name = "megatron"
    sharded = True

    def setup(self):
        tp = self.spec.tp
        if self.world % tp:
            raise ValueError(f"strategy megatron: WORLD_SIZE {self.world} is not a multiple of tp {tp}")
        from portkit.patches import megatron as adapter
        adapter.init(tp=tp, seed=1234)
        from megatron.core import parallel_state as ps
        self.tp_rank = ps.get_tensor_model_parallel_rank()
        self.dp_world, self.dp_rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()

    def parallelize(self, model):
        from portkit.models.tensor_parallel import apply_tp
        return apply_tp(model, self.spec.tp, self.tp_rank)

    def prepare(self, model, optimizer):
        if self.dp_world == 1:
            return Engine(model, model, optimizer)
        from megatron.core import parallel_state as ps
        wrapped = torch.nn.parallel.DistributedDataParallel(
            model, process_group=ps.get_data_parallel_group(),
            device_ids=None if self.device().type == "cpu" else [self.device().index])
        return Engine(model, wrapped, optimizer)


class ColossalAIEngine(Engine):
    def backward(self, loss):
        self.booster.backward(loss, self.optimizer)

    def set_lr(self, lr):
        for group in getattr(self.optimizer, "optim", self.optimizer).param_groups:
            group["lr"] = lr

    def step(self):
        if self.zero:  # LowLevelZero clips inside its step (max_norm)
            self.optimizer.step()
        else:
            self.optimizer.clip_grad_by_norm(self.clip)
            self.optimizer.step()
        self.optimizer.zero_grad()

    def state_dict(self):
        if self.zero:
            raise NotImplementedError("in-stage checkpoints under Colossal-AI LowLevelZero are not supported yet: "
                                      "its optimizer state is partitioned per rank; set checkpoint_every above "
                                      "the stage lengths (stage-end checkpoints work)")
        return {"model": self.model_state(), "optim": self.optimizer.optim.state_dict()}

    def load_state_dict(self, state):
        if self.zero:
            self.state_dict()
        self.module.load_state_dict(state["model"])
        self.optimizer.optim.load_state_dict(state["optim"])


class ColossalAI(_Distributed):
    """Colossal-AI's Booster with TorchDDPPlugin (plugin: ddp) or LowLevelZeroPlugin ZeRO-2
    (plugin: zero2), on portkit's Colossal-AI adapter."""
    name = "colossalai"

    def setup(self):
        from portkit.patches import colossalai as adapter
        adapter.init(backend=portkit.backend().name)

    def prepare(self, model, optimizer):
        from colossalai.booster import Booster
        from colossalai.booster.plugin import LowLevelZeroPlugin, TorchDDPPlugin
        zero = self.spec.plugin == "zero2"
        plugin = LowLevelZeroPlugin(stage=2, precision="fp32", max_norm=1.0) if zero else TorchDDPPlugin()
        booster = Booster(plugin=plugin)
        wrapped, opt, *_ = booster.boost(model, optimizer)
        engine = ColossalAIEngine(model, wrapped, opt)
        engine.booster, engine.zero = booster, zero
        return engine


STRATEGIES: dict[str, type[Strategy]] = {"single": Strategy, "ddp": DDP, "deepspeed": DeepSpeed,
                                         "megatron": Megatron, "colossalai": ColossalAI}


def build(spec) -> Strategy:
    return STRATEGIES[spec.name](spec)
