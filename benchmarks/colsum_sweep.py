"""Launch shapes of the column sum (portkit.ops.reduce_triton): `python3 benchmarks/colsum_sweep.py`
on a CUDA or ROCm GPU.

Times `column_sum` at the 1.3B MLP's bias-gradient shapes (16384 x 8192 and 16384 x 2048 bf16)
for every combination of the module's BLOCK_ROWS, BLOCK_COLS, WARPS and PROGRAMS_PER_SM, next
to torch's sum and inductor's compiled sum of the same tensor, and checks each result against
torch's fp32 sum. Prints GB/s (bytes read / time), the best launch shape last.
"""
import itertools

import torch

from portkit.bench.ops import BenchConfig, time_ms
from portkit.ops import reduce_triton


TIMING = BenchConfig(iters=50, warmup=1)  # bench ops' timing: the median of 50 calls


def ms(fn, x) -> float:
    return time_ms(lambda: fn(x), TIMING)


def main() -> None:
    compiled = torch.compile(lambda x: x.float().sum(0))
    for n, f in ((16384, 8192), (16384, 2048)):
        x = torch.randn(n, f, device="cuda", dtype=torch.bfloat16)
        want = x.float().sum(0)
        gbs = lambda t: x.numel() * x.element_size() / t / 1e6
        t = ms(lambda x: x.sum(0, dtype=torch.float32), x)
        print(f"{n}x{f} torch sum: {t:.3f} ms, {gbs(t):.0f} GB/s")
        t = ms(compiled, x)
        print(f"{n}x{f} inductor: {t:.3f} ms, {gbs(t):.0f} GB/s")
        best = None
        for shape in itertools.product((16, 32, 64), (128, 256, 512), (4, 8), (2, 4, 8)):
            (reduce_triton.BLOCK_ROWS, reduce_triton.BLOCK_COLS, reduce_triton.WARPS,
             reduce_triton.PROGRAMS_PER_SM) = shape
            try:
                got = reduce_triton.column_sum(x)
            except Exception as err:  # noqa: BLE001 - a shape the compiler rejects is reported
                print(f"{n}x{f} {shape}: {type(err).__name__}")
                continue
            if not torch.allclose(got, want, rtol=1e-3, atol=1e-2):
                print(f"{n}x{f} {shape}: WRONG, max error {(got - want).abs().max():.3g}")
                continue
            t = ms(reduce_triton.column_sum, x)
            print(f"{n}x{f} rows,cols,warps,per_sm={shape}: {t:.3f} ms, {gbs(t):.0f} GB/s",
                  flush=True)
            best = min(best or (t, shape), (t, shape))
        print(f"{n}x{f} best: {best[1]} {best[0]:.3f} ms, {gbs(best[0]):.0f} GB/s")


if __name__ == "__main__":
    main()
