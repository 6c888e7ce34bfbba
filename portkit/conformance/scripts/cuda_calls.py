"""CUDA calls as scripts make them, one per adaptation; prints what each gave as one JSON line."""
import json
import os

import torch
import torch.distributed as dist

out = {}
x = torch.zeros(2, device="cuda")
out["factory"] = x.device.type
out["to_cuda_1"] = torch.ones(2).to(torch.device("cuda:1")).device.type
out["tensor_cuda"] = torch.ones(2).cuda().device.type
out["module_cuda"] = next(torch.nn.Linear(2, 2).cuda().parameters()).device.type
out["generator"] = torch.Generator(device="cuda").device.type
rank = 0  # an int device means cuda:rank (torch.multiprocessing.spawn scripts)
out["int_devices"] = [torch.ones(2).to(rank).device.type, next(torch.nn.Linear(2, 2).to(rank).parameters()).device.type,
                      torch.ones(2).cuda(rank).device.type, torch.zeros(2, device=rank).device.type,
                      torch.device(rank).type]
out["ints_kept"] = torch.full((2,), 1).tolist() + torch.ones(2).new_zeros(1).tolist()
out["is_available"] = torch.cuda.is_available()
out["device_count"] = torch.cuda.device_count()
out["device_name"] = torch.cuda.get_device_name()
out["bf16"] = torch.cuda.is_bf16_supported()
torch.cuda.set_device(0)
torch.cuda.manual_seed_all(3)
state = torch.cuda.get_rng_state()
a = torch.rand(2, device="cuda")
torch.cuda.set_rng_state(state)
out["rng_restored"] = torch.equal(a, torch.rand(2, device="cuda"))
s = torch.cuda.Stream()
with torch.cuda.stream(s):
    e = torch.cuda.Event(enable_timing=True)
    e.record()
torch.cuda.current_stream().wait_stream(s)
torch.cuda.synchronize()
out["memory"] = torch.cuda.memory_allocated() >= 0 and torch.cuda.max_memory_allocated() >= 0
with torch.autocast("cuda", dtype=torch.bfloat16):
    out["autocast"] = (torch.ones(2, 2, device="cuda") @ torch.ones(2, 2, device="cuda")).dtype == torch.bfloat16
with torch.cuda.amp.autocast(dtype=torch.bfloat16):
    out["cuda_amp_autocast"] = (torch.ones(2, 2).cuda() @ torch.ones(2, 2).cuda()).dtype == torch.bfloat16
out["grad_scaler"] = torch.amp.GradScaler("cuda")._device
out["cuda_amp_grad_scaler"] = torch.cuda.amp.GradScaler()._device
out["pin_memory"] = torch.ones(2).pin_memory().device.type
out["visible_devices"] = {k: v for k, v in os.environ.items() if k.endswith("VISIBLE_DEVICES")}
dist.init_process_group("nccl", init_method="tcp://127.0.0.1:0", rank=0, world_size=1)
out["init_process_group"] = dist.get_backend()
out["new_group"] = dist.get_backend(dist.new_group([0], backend="nccl"))
dist.destroy_process_group()
try:
    torch.cuda.CUDAGraph()
except Exception as e:
    out["unserved"] = str(e)
print(json.dumps(out))
