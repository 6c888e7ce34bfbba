"""DeepSpeed ZeRO through portkit: run under `torch.distributed.run --nproc-per-node 2`.

Trains the tiny MLP of `ds_common` under each run given, one engine after the other in the
same processes, and writes from rank 0 a JSON with the global mean loss per step and what
the DeepSpeed accelerator reported. A run is a ZeRO stage, optionally with ":fused": then
DeepSpeed builds its own FusedAdam from the config ("optimizer": AdamW) instead of taking
the client's torch AdamW. Usage:
    python -m torch.distributed.run --nproc-per-node 2 tests/patches/ds_worker.py OUT.json 2 3 2:fused
"""
import gc
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ds_common as common  # noqa: E402


def train(run: str, device: torch.device, rank: int, world: int) -> list[float]:
    import deepspeed
    import torch.distributed as dist
    stage, _, kind = run.partition(":")
    model = common.make_model()
    config = {"train_batch_size": common.BATCH, "train_micro_batch_size_per_gpu": common.BATCH // world,
              "gradient_accumulation_steps": 1, "zero_optimization": {"stage": int(stage)},
              "zero_allow_untested_optimizer": True, "steps_per_print": 1000}
    if kind == "fused":
        config["optimizer"] = {"type": "AdamW", "params": {"lr": common.LR, "weight_decay": common.WEIGHT_DECAY}}
        optimizer = None
    else:
        optimizer = common.make_optimizer(model)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    if kind == "fused":
        assert type(engine.optimizer.optimizer if int(stage) else engine.optimizer).__name__ == "FusedAdam", engine.optimizer
    losses = []
    for x, y in common.batches():
        shard = slice(rank * len(x) // world, (rank + 1) * len(x) // world)
        loss = common.loss_fn(engine(x[shard].to(device)), y[shard].to(device))
        engine.backward(loss)
        engine.step()
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        losses.append(mean.item() / world)
    engine.destroy()
    return losses


def main() -> None:
    out, runs = sys.argv[1], sys.argv[2:]
    from portkit.patches import deepspeed as ds_patch
    backend = ds_patch.init()
    import torch.distributed as dist
    from deepspeed.accelerator import get_accelerator
    rank, world = dist.get_rank(), dist.get_world_size()
    device = get_accelerator().device(backend.current_device()) if backend.device_type != "cpu" else torch.device("cpu")
    result = {"accelerator": type(get_accelerator()).__name__, "device_type": get_accelerator()._name,
              "comm": get_accelerator().communication_backend_name(), "dist_backend": dist.get_backend(),
              "world": world, "losses": {}}
    for run in runs:
        result["losses"][run] = train(run, device, rank, world)
    if rank == 0:
        with open(out, "w") as f:
            json.dump(result, f)
    gc.collect()  # engines in reference cycles release their gloo work while the group is alive
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
