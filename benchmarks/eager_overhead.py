"""Where an eager fused op's host time goes, on a GPU: `python benchmarks/eager_overhead.py`.

For rms_norm and layer_norm at 256 x 4096 (host-bound) it prints microseconds of host time
per call, measured without synchronising inside the loop (the device runs behind):
  fwd            the op under no_grad (registry dispatch + Triton launch)
  fwd+bwd        torch.autograd.grad of the op (the autograd engine's device thread runs the backward)
  bwd direct     the Triton backward launcher called on this thread (no autograd)
  bwd in thread  the same launcher called from another Python thread, as the engine does
and torch's own op beside it. bwd direct far below fwd+bwd - fwd points at the autograd
path; bwd in thread far above bwd direct at thread hand-off.
"""
from __future__ import annotations

import sys
import threading
import time

import torch
import torch.nn.functional as F

import portkit
import portkit.ops as ops
from portkit.ops import norms_triton

CALLS = 200


def host_us(fn) -> float:
    for _ in range(20):
        fn()
    portkit.synchronize()
    t = time.perf_counter()
    for _ in range(CALLS):
        fn()
    host = (time.perf_counter() - t) / CALLS * 1e6
    portkit.synchronize()
    return host


def in_thread(fn):
    def run():
        th = threading.Thread(target=fn)
        th.start()
        th.join()
    return run


def main() -> None:
    portkit.select_backend(None)
    dev = portkit.device()
    x = torch.randn(256, 4096, device=dev, dtype=torch.bfloat16, requires_grad=True)
    w = torch.rand(4096, device=dev, dtype=torch.bfloat16, requires_grad=True)
    b = torch.rand(4096, device=dev, dtype=torch.bfloat16, requires_grad=True)
    dy = torch.randn_like(x)
    rstd = torch.rand(256, device=dev)
    mean = torch.rand(256, device=dev)
    cases = {
        "rms_norm fwd": lambda: ops.rms_norm(x.detach(), w.detach()),
        "F.rms_norm fwd": lambda: F.rms_norm(x.detach(), (4096,), w.detach(), 1e-6),
        "rms_norm fwd+bwd": lambda: torch.autograd.grad(ops.rms_norm(x, w), (x, w), dy),
        "F.rms_norm fwd+bwd": lambda: torch.autograd.grad(F.rms_norm(x, (4096,), w, 1e-6), (x, w), dy),
        "rms_norm bwd direct": lambda: norms_triton.rms_norm_bwd(dy, x.detach(), w.detach(), rstd),
        "layer_norm fwd+bwd": lambda: torch.autograd.grad(ops.layer_norm(x, w, b), (x, w, b), dy),
        "F.layer_norm fwd+bwd": lambda: torch.autograd.grad(F.layer_norm(x, (4096,), w, b), (x, w, b), dy),
        "layer_norm bwd direct": lambda: norms_triton.layer_norm_bwd(dy, x.detach(), w.detach(), b.detach(),
                                                                     mean, rstd),
    }
    cases["Function, Python bwd, no kernel"] = lambda: torch.autograd.grad(Passthrough.apply(x), (x,), dy)
    cases["Function, bwd = F.rms_norm ops"] = lambda: torch.autograd.grad(TorchBwd.apply(x), (x,), dy)
    cases["Function, bwd = Triton launcher"] = lambda: torch.autograd.grad(TritonBwd.apply(x, w), (x, w), dy)
    thread_cases = {"thread start+join (empty)": in_thread(lambda: None),
                    "rms_norm bwd in thread": in_thread(cases["rms_norm bwd direct"])}
    for name, fn in {**cases, **thread_cases}.items():
        print(f"{name:32s} {host_us(fn):8.1f} us host per call", flush=True)
    profile("rms_norm fwd+bwd", cases["rms_norm fwd+bwd"])


class Passthrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, dy):
        return dy


class TorchBwd(Passthrough):
    @staticmethod
    def backward(ctx, dy):
        return F.rms_norm(dy, (dy.shape[-1],), None, 1e-6)


class TritonBwd(torch.autograd.Function):
    """portkit's Triton kernels called directly: no registry, no custom-op body. Far below
    "rms_norm fwd+bwd" puts the overhead in portkit's path; as high, in Triton under the engine."""
    @staticmethod
    def forward(ctx, x, w):
        y, rstd = norms_triton.rms_norm_fwd(x, w, 1e-6)
        ctx.save_for_backward(x, w, rstd)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, w, rstd = ctx.saved_tensors
        return norms_triton.rms_norm_bwd(dy, x, w, rstd)


def profile(name: str, fn) -> None:
    """The host-time table of 50 calls (Python functions included) and the GIL switch interval."""
    for _ in range(10):
        fn()
    portkit.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], with_stack=True) as prof:
        for _ in range(50):
            fn()
        portkit.synchronize()
    print(f"== {name}: profile of 50 calls (switch interval {sys.getswitchinterval()} s)")
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=40, max_name_column_width=90))


if __name__ == "__main__":
    main()
