"""The cuBLASLt candidates of the 1.3B GeLU MLP's epilogue matmuls:
`python3 benchmarks/cublaslt_candidates.py [COUNT ...]` on a CUDA GPU.

For fc1's GELU_AUX_BIAS (16384 x 2048 @ 2048 x 8192) and the dgrad's DGELU (16384 x 2048 @
2048 x 8192), bf16: asks the heuristic for COUNT candidates (16 and 64 by default), times
each as portkit.ops.cublaslt's tuner does, and prints each one's ms, TFLOP/s and algorithm
(id, tile, stages, split-k, cluster), next to torch's matmul of the same shape without the
epilogue: the ceiling the epilogue pays against.
"""
import ctypes
import sys

import torch

from portkit.bench.ops import BenchConfig, time_ms
from portkit.ops import cublaslt

N, D, F = 16384, 2048, 8192
TIMING = BenchConfig(iters=20, warmup=1)  # bench ops' timing: the median of 20 calls
CONFIG = {"id": 0, "tile": 1, "splitk": 2, "stages": 6, "cluster": 8}  # cublasLtMatmulAlgoConfigAttributes_t


def describe(result) -> str:
    fn = cublaslt._lib().cublasLtMatmulAlgoConfigGetAttribute
    fn.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    out = []
    for name, attr in CONFIG.items():
        value, written = ctypes.c_uint32(0), ctypes.c_size_t(0)
        fn(ctypes.byref(result.algo), attr, ctypes.byref(value), ctypes.sizeof(value), ctypes.byref(written))
        out.append(f"{name} {value.value}")
    return ", ".join(out)


def main() -> None:
    counts = [int(c) for c in sys.argv[1:]] or [16, 64]
    torch.manual_seed(0)
    x, dy = (torch.randn(N, D, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    w1 = torch.randn(F, D, device="cuda", dtype=torch.bfloat16) / D ** 0.5
    w2 = torch.randn(D, F, device="cuda", dtype=torch.bfloat16) / F ** 0.5
    b1 = torch.randn(F, device="cuda", dtype=torch.bfloat16)
    z = torch.empty(N, F, device="cuda", dtype=torch.bfloat16)
    tflops = lambda t: 2 * N * D * F / t / 1e9
    cases = {"GELU_AUX_BIAS": (lambda: cublaslt.matmul(x, w1.t(), cublaslt.GELU_AUX_BIAS, b1, z),
                               lambda: torch.addmm(b1, x, w1.t())),
             "DGELU": (lambda: cublaslt.matmul(dy, w2, cublaslt.DGELU, None, z), lambda: dy @ w2)}
    for name, (fused, plain) in cases.items():
        t = time_ms(plain, TIMING)
        print(f"{name} torch without the epilogue: {t:.3f} ms, {tflops(t):.0f} TFLOP/s", flush=True)
        for count in counts:
            cublaslt.CANDIDATES = count
            cublaslt._plans.clear()
            fused()
            (plan,) = cublaslt._plans.values()
            print(f"{name} asked {count}: {len(plan.algos)} candidates")
            per = [t / cublaslt.TUNE_REPEATS for t in plan.times]
            for i in sorted(range(len(per)), key=per.__getitem__):
                print(f"  {per[i]:.3f} ms {tflops(per[i]):4.0f} TFLOP/s  {describe(plan.algos[i])}")
            t = time_ms(fused, TIMING)
            print(f"{name} asked {count}, chosen: {t:.3f} ms, {tflops(t):.0f} TFLOP/s", flush=True)


if __name__ == "__main__":
    main()
