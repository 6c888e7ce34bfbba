"""When FlashAttention-4 compiles: `python3 benchmarks/fa4_compile.py`, on Hopper or Blackwell
with flash-attn-4 installed.

Times the first forward + backward call of portkit's flash-attn-4 implementation for several
sequence lengths in one process (B=2, 16 heads of 128, bf16, causal). Run it twice with
FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED=1 to see what the package's disk cache saves a new
process. Output: benchmarks/results/fa4-compile-*.log.
"""
import time

import torch

from portkit.ops import attention_fa4


def first_call_s(t: int, heads: int = 16, dim: int = 128, batch: int = 2) -> float:
    q, k, v = (torch.randn(batch, t, heads, dim, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    start = time.perf_counter()
    out, lse = attention_fa4.fa4_fwd(q, k, v, dim ** -0.5)
    attention_fa4.fa4_bwd(torch.randn_like(out), q, k, v, out, lse, dim ** -0.5)
    torch.cuda.synchronize()
    return time.perf_counter() - start


for t in (2048, 1024, 4096, 2048, 384, 64, 2048):
    print(f"T={t}: {first_call_s(t):.2f} s", flush=True)
