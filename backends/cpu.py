"""The CPU backend: always available, gloo for collectives, the fallback of last resort."""
import os
import platform

import psutil
import torch

from portkit.backend import Backend, Capabilities
from portkit.hookspecs import hookimpl


class CPUBackend(Backend):
    name = "cpu"
    device_type = "cpu"
    dist_backend = "gloo"
    priority = 0

    def probe(self):
        return None

    def device_name(self, index=0):
        return platform.processor() or platform.machine()

    def synchronize(self):
        pass

    def manual_seed(self, seed):
        torch.manual_seed(seed)

    def memory_stats(self, index=None):
        # The CPU has no allocator counters; report this process's resident memory.
        rss = psutil.Process(os.getpid()).memory_info().rss
        return {"allocated": rss, "peak_allocated": rss, "reserved": rss,
                "total": psutil.virtual_memory().total}

    def reset_peak_memory(self):
        pass

    def capabilities(self):
        return Capabilities(bf16=True, fp16=True, triton=False)

    def peak_bf16_tflops(self, index=0):
        return None

    def versions(self):
        return {"torch": torch.__version__, "threads": str(torch.get_num_threads())}


@hookimpl
def portkit_register_backends():
    return [CPUBackend]
