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

STEPS, GLOBAL_BATCH, D_IN, D_HID, N_CLASSES, LR = 3, 8, 16, 32, 4, 1e-2


def build_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(D_IN, D_HID), torch.nn.GELU(), torch.nn.Linear(D_HID, N_CLASSES))


def batches():
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(GLOBAL_BATCH, D_IN, generator=g), torch.randint(0, N_CLASSES, (GLOBAL_BATCH,), generator=g))
            for _ in range(STEPS)]


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
