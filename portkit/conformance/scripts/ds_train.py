"""Train a small MLP with DeepSpeed ZeRO, written for NVIDIA GPUs.

    deepspeed --num_gpus 2 ds_train.py --deepspeed_config ds_config_zero2.json
"""
import argparse
import json

import torch
import torch.distributed as dist
import deepspeed

from mlp_task import GLOBAL_BATCH, LR, batches, build_model  # mlp_task.py, beside this script


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
