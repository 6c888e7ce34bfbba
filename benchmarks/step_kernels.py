"""Where a compiled training step's device time goes: `python3 benchmarks/step_kernels.py [model] [label]`.

Builds `portkit bench train`'s portkit-compiled variant of the preset (default 1.3b), runs 6
steps on its text batches, then profiles 2 and prints, per step, the sum of all kernels' device
time and the 14 largest kernels (ms, calls). A step time above that sum is the device idling.
Output: benchmarks/results/step-kernels-*.log.
"""
import sys

import torch

import portkit
from portkit.bench import train as bt
from portkit.ops import registry
from torch.profiler import ProfilerActivity, profile

name = sys.argv[1] if len(sys.argv) > 1 else "1.3b"
label = sys.argv[2] if len(sys.argv) > 2 else name
p = bt.PRESETS[name]
data = bt.text_batches(8, p.batch, p.seq).to(portkit.device())
b = bt.build("portkit-compiled", p, p.seq, "inductor")
print(label, "attention served:", registry.serves("causal_attention_fwd"))
for i in range(6):
    bt.train_step(b, data[i, :, :-1], data[i, :, 1:], i)
torch.cuda.synchronize()
with profile(activities=[ProfilerActivity.CUDA]) as prof:
    for i in range(6, 8):
        bt.train_step(b, data[i, :, :-1], data[i, :, 1:], i)
    torch.cuda.synchronize()
rows = [e for e in prof.key_averages() if e.device_time_total > 0]
print(f"{label}: kernel time {sum(e.self_device_time_total for e in rows) / 2e3:.1f} ms a step")
for e in sorted(rows, key=lambda e: -e.self_device_time_total)[:14]:
    print(f"  {e.self_device_time_total / 2e3:7.2f} ms  {e.count // 2:4d}x  {e.key[:110]}")
