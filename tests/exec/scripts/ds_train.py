"""Train a small MLP with DeepSpeed ZeRO, written for NVIDIA GPUs.

    deepspeed --num_gpus 2 ds_train.py --deepspeed_config ds_config_zero2.json
"""
import argparse
import json

import torch
import torch.distributed as dist
import deepspeed

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
    parser.add_argument("--local_rank", type=int, default=-1)
    parser.add_argument("--force_deepspeed_cpu_accelerator", action="store_true")
    parser = deepspeed.add_config_arguments(parser)
    args = parser.parse_args()

    deepspeed.init_distributed(dist_backend="nccl")
    local_rank = dist.get_rank() % torch.cuda.device_count()
    torch.cuda.set_device(local_rank)
    if args.force_deepspeed_cpu_accelerator:  # what a script written for DeepSpeed's CPU build may do
        from deepspeed.accelerator import set_accelerator
        from deepspeed.accelerator.cpu_accelerator import CPU_Accelerator
        set_accelerator(CPU_Accelerator())
    model = build_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01)
    engine, optimizer, _, _ = deepspeed.initialize(args=args, model=model, optimizer=optimizer)
    if args.force_deepspeed_cpu_accelerator:
        return
    rank, world = dist.get_rank(), dist.get_world_size()
    losses = []
    for x, y in batches():
        shard = slice(rank * GLOBAL_BATCH // world, (rank + 1) * GLOBAL_BATCH // world)
        x, y = x[shard].cuda(), y[shard].to(engine.device)
        loss = torch.nn.functional.cross_entropy(engine(x), y)
        engine.backward(loss)
        engine.step()
        dist.all_reduce(loss)
        losses.append(loss.item() / world)
    if rank == 0:
        print(json.dumps({"script": "ds_train.py", "stage": engine.zero_optimization_stage(),
                          "max_memory": torch.cuda.max_memory_allocated(), "losses": losses}))


if __name__ == "__main__":
    main()
