"""Train a small MLP with a Colossal-AI Booster, written for NVIDIA GPUs.

    colossalai run --nproc_per_node 2 colo_train.py --plugin low_level_zero
    torchrun --nproc_per_node 2 colo_train.py --plugin torch_ddp
"""
import argparse
import json

import torch
import torch.distributed as dist
import colossalai
from colossalai.accelerator import get_accelerator
from colossalai.booster import Booster
from colossalai.booster.plugin import LowLevelZeroPlugin, TorchDDPPlugin

from mlp_task import GLOBAL_BATCH, LR, batches, build_model  # mlp_task.py, beside this script


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--plugin", choices=["torch_ddp", "low_level_zero"], default="torch_ddp")
    parser.add_argument("--force_colossalai_cpu_accelerator", action="store_true")
    args = parser.parse_args()

    if args.force_colossalai_cpu_accelerator:  # what a script written for Colossal-AI's CPU build may do
        from colossalai.accelerator import set_accelerator
        set_accelerator("cpu")
    colossalai.launch_from_torch(seed=42)
    device = get_accelerator().get_current_device()
    if args.plugin == "torch_ddp":
        plugin = TorchDDPPlugin()
    else:
        plugin = LowLevelZeroPlugin(stage=2, precision="fp32", initial_scale=2**5)
    booster = Booster(plugin=plugin)

    model = build_model().cuda()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01)
    criterion = torch.nn.CrossEntropyLoss()
    model, optimizer, criterion, _, _ = booster.boost(model, optimizer, criterion)

    rank, world = dist.get_rank(), dist.get_world_size()
    losses = []
    for x, y in batches():
        shard = slice(rank * GLOBAL_BATCH // world, (rank + 1) * GLOBAL_BATCH // world)
        x, y = x[shard].to(device), y[shard].cuda()
        loss = criterion(model(x), y)
        booster.backward(loss, optimizer)
        optimizer.step()
        optimizer.zero_grad()
        dist.all_reduce(loss)
        losses.append(loss.item() / world)
    if rank == 0:
        print(json.dumps({"script": "colo_train.py", "plugin": args.plugin, "accelerator": get_accelerator().name,
                          "max_memory": torch.cuda.max_memory_allocated(), "losses": losses}))


if __name__ == "__main__":
    main()
