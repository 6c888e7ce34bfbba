"""Where a compiled training step's device time goes:
`python3 benchmarks/step_kernels.py [model] [label] [top]`.

Builds `portkit bench train`'s portkit-compiled variant of the preset (default 1.3b), runs 6
steps on its text batches, then profiles 2 and prints, per step, the sum of all kernels' device
time and the `top` (default 14) largest kernels by name (ms, calls; from the profiler's trace,
so an op's kernels are not counted twice); then the 2 steps' span on the device from the first
kernel's start to the last one's end, and the gaps over 20 us between kernels, the largest by
the kernels that border them: the device idling inside the steps. Also the mean SM clock and
power over the profiled steps, as `bench train` reports them for its loop.
Output: benchmarks/results/step-kernels-*.log.
"""
import collections
import json
import sys
import tempfile

import portkit
from portkit.bench import train as bt
from portkit.ops import registry
from torch.profiler import ProfilerActivity, profile

name = sys.argv[1] if len(sys.argv) > 1 else "1.3b"
label = sys.argv[2] if len(sys.argv) > 2 else name
top = int(sys.argv[3]) if len(sys.argv) > 3 else 14
p = bt.PRESETS[name]
data = bt.text_batches(8, p.batch, p.seq).to(portkit.device())
b = bt.build("portkit-compiled", p, p.seq, "inductor")
print(label, "attention served:", registry.serves("causal_attention_fwd"))
for i in range(6):
    bt.train_step(b, data[i, :, :-1], data[i, :, 1:], i)
portkit.synchronize()
clocks = bt.Clocks(portkit.backend().module)  # the clock a short profile runs at, beside bench train's loop
with clocks, profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
    for i in range(6, 8):
        bt.train_step(b, data[i, :, :-1], data[i, :, 1:], i)
    portkit.synchronize()
print(label, "SM clock and power over the profiled steps:", clocks.means())
with tempfile.NamedTemporaryFile(suffix=".json") as f:
    prof.export_chrome_trace(f.name)  # read back by name: the export does not write through this handle
    with open(f.name) as trace:
        events = json.load(trace)["traceEvents"]
work = sorted((e for e in events if e.get("ph") == "X" and e.get("cat") in ("kernel", "gpu_memset", "gpu_memcpy")),
              key=lambda e: e["ts"])
if not work:
    sys.exit(f"{label}: no device kernels in the trace (this profiles a GPU's steps)")
device_us, calls = collections.Counter(), collections.Counter()
for e in work:
    device_us[e["name"][:110]] += e["dur"]
    calls[e["name"][:110]] += 1
print(f"{label}: kernel time {sum(device_us.values()) / 2e3:.1f} ms a step")
for kernel, us in device_us.most_common(top):
    print(f"  {us / 2e3:7.2f} ms  {calls[kernel] // 2:4d}x  {kernel}")
gaps, end, last = collections.Counter(), work[0]["ts"] + work[0]["dur"], work[0]
for e in work[1:]:
    if e["ts"] - end > 20:
        gaps[(last["name"][:60], e["name"][:60])] += e["ts"] - end
    if e["ts"] + e["dur"] > end:
        end, last = e["ts"] + e["dur"], e
print(f"{label}: 2 steps span {(end - work[0]['ts']) / 1e3:.1f} ms, {len(work)} kernels, "
      f"gaps over 20 us {sum(gaps.values()) / 1e3:.2f} ms")
for (before, after), us in gaps.most_common(12):
    print(f"  {us / 1e3:6.2f} ms  after {before} | before {after}")
