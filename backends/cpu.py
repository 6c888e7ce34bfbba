"""The CPU backend: always available, gloo for collectives, the fallback of last resort."""
import os
import platform

import psutil
import torch

from portkit.backend import Backend, Capabilities
from portkit.hookspecs import hookimpl


def cpu_model() -> str:
    """The processor's name from /proc/cpuinfo (Linux), else what the platform module knows."""
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


class CPUBackend(Backend):
    name = "cpu"
    device_type = "cpu"
    dist_backend = "gloo"
    priority = 0

    def probe(self):
        return None

    def device_name(self, index=0):
        return cpu_model()

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
