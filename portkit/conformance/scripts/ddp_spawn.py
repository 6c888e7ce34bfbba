"""
DDP with one process per GPU started by torch.multiprocessing.spawn, as in PyTorch's
"Getting Started with Distributed Data Parallel" tutorial and its multigpu.py.

To run on 2 GPUs of one node:
$ python ddp_spawn.py
The same with multiprocessing's spawn context instead of torch.multiprocessing.spawn:
$ python ddp_spawn.py --start=process
"""
import json
import os
import socket
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.optim as optim
from torch.nn.parallel import DistributedDataParallel as DDP

world_size = 2
steps = 3
start = 'spawn'  # 'spawn': torch.multiprocessing.spawn; 'process': mp.get_context('spawn').Process
for arg in sys.argv[1:]:
    key, val = arg[2:].split('=')
    globals()[key] = type(globals()[key])(val)


class ToyModel(nn.Module):
    def __init__(self):
        super(ToyModel, self).__init__()
        self.net1 = nn.Linear(10, 10)
        self.relu = nn.ReLU()
        self.net2 = nn.Linear(10, 5)

    def forward(self, x):
        return self.net2(self.relu(self.net1(x)))


def setup(rank, world_size):
    # initialize the process group
    dist.init_process_group("nccl", rank=rank, world_size=world_size)
    torch.cuda.set_device(rank)


def cleanup():
    dist.destroy_process_group()


def demo_basic(rank, world_size):
    setup(rank, world_size)
    torch.manual_seed(0)
    # create model and move it to GPU with id rank
    model = ToyModel().to(rank)
    ddp_model = DDP(model, device_ids=[rank])
    loss_fn = nn.MSELoss()
    optimizer = optim.SGD(ddp_model.parameters(), lr=0.1)
    device = torch.device(rank)
    torch.manual_seed(1000 + rank)
    losses = []
    for step in range(steps):
        inputs = torch.randn(20, 10).to(device)
        labels = torch.randn(20, 5).cuda(rank)
        optimizer.zero_grad()
        loss = loss_fn(ddp_model(inputs), labels)
        loss.backward()
        optimizer.step()
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        losses.append(mean.item() / world_size)
    if rank == 0:
        print(json.dumps({"script": "ddp_spawn.py", "start": start, "losses": losses}))
    cleanup()


def free_port():
    with socket.socket() as s:
        s.bind(('localhost', 0))
        return str(s.getsockname()[1])


if __name__ == "__main__":
    os.environ['MASTER_ADDR'] = 'localhost'
    os.environ['MASTER_PORT'] = free_port()
    if start == 'spawn':
        mp.spawn(demo_basic, args=(world_size,), nprocs=world_size, join=True)
    else:
        ctx = mp.get_context('spawn')
        workers = [ctx.Process(target=demo_basic, args=(rank, world_size)) for rank in range(world_size)]
        for p in workers:
            p.start()
        for p in workers:
            p.join()
        sys.exit(max(p.exitcode for p in workers))
