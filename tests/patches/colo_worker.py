"""Colossal-AI Booster through portkit: run under `torch.distributed.run --nproc-per-node 2`.

Trains the tiny MLP of `ds_common` with each plugin given, one after the other in the same
processes (Colossal-AI's import is slow: one launch serves every check), and writes from
rank 0 a JSON with the global mean loss per step, what the accelerator reported and the
kernel loaders' results. Plugins: ddp, zero1, zero2 (LowLevelZero, fp32, overlap on),
zero2-hybridadam (LowLevelZero with Colossal-AI's HybridAdam: portkit's Adam kernels).
Usage:
    python -m torch.distributed.run --nproc-per-node 2 tests/patches/colo_worker.py OUT.json ddp zero2
"""
import gc
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ds_common as common  # noqa: E402


def make_plugin(name: str):
    from colossalai.booster.plugin import LowLevelZeroPlugin, TorchDDPPlugin
    if name == "ddp":
        return TorchDDPPlugin()
    stage = 1 if name == "zero1" else 2
    return LowLevelZeroPlugin(stage=stage, precision="fp32", overlap_communication=True)


def make_optimizer(name: str, model: torch.nn.Module) -> torch.optim.Optimizer:
    if name.endswith("hybridadam"):
        from colossalai.nn.optimizer import HybridAdam
        return HybridAdam(model.parameters(), lr=common.LR, weight_decay=common.WEIGHT_DECAY, adamw_mode=True)
    return common.make_optimizer(model)


def train(name: str, device: torch.device, rank: int, world: int) -> list[float]:
    import torch.distributed as dist
    from colossalai.booster import Booster
    booster = Booster(plugin=make_plugin(name.split("-")[0]))
    model = common.make_model().to(device)
    optimizer = make_optimizer(name, model)
    model, optimizer, criterion, _, _ = booster.boost(model, optimizer, common.loss_fn)
    losses = []
    for x, y in common.batches():
        shard = slice(rank * len(x) // world, (rank + 1) * len(x) // world)
        loss = criterion(model(x[shard].to(device)), y[shard].to(device))
        booster.backward(loss, optimizer)
        optimizer.step()
        optimizer.zero_grad()
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        losses.append(mean.item() / world)
    return losses


def loader_report() -> dict:
    from colossalai.kernel.kernel_loader import CPUAdamLoader, FusedOptimizerLoader, LayerNormLoader
    return {cls.__name__: getattr(cls().load(), "__doc__", "") or "" for cls in
            (CPUAdamLoader, FusedOptimizerLoader, LayerNormLoader)}


def main() -> None:
    out, plugins = sys.argv[1], sys.argv[2:]
    from portkit.patches import colossalai as colo_patch
    backend = colo_patch.init()
    import torch.distributed as dist
    from colossalai.accelerator import get_accelerator
    rank, world = dist.get_rank(), dist.get_world_size()
    accel = get_accelerator()
    device = accel.get_current_device()
    result = {"accelerator": type(accel).__name__, "name": accel.name, "comm": accel.communication_backend,
              "dist_backend": dist.get_backend(), "world": world, "backend": backend.name,
              "loaders": loader_report(), "losses": {}}
    for name in plugins:
        result["losses"][name] = train(name, device, rank, world)
    if rank == 0:
        with open(out, "w") as f:
            json.dump(result, f)
    gc.collect()  # engines in reference cycles release their gloo work while the group is alive
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
