"""cuBLASLt matmuls with fused epilogues, called through ctypes on the cuBLASLt torch loaded.

torch exposes cuBLASLt's bias epilogue (addmm) but not the ones a GeLU MLP trains with
(apex's fused_dense and Transformer Engine use them):
  GELU_AUX_BIAS  h = gelu(x @ W1^T + b1), and z = x @ W1^T + b1 kept for the backward,
                 from one matmul (the unfused path writes z, then reads it to write h);
  DGELU          dz = (dy @ W2) * gelu'(z) from one matmul (the unfused path writes dh,
                 then reads dh and z to write dz).
The bias-gradient epilogues (BGRADB, DGELU_BGRAD) are not bound: on the H100 BGRADB ran as a
kernel of its own, slower than the Triton column sum portkit.ops.mlp uses, and on the H200
DGELU_BGRAD took twice DGELU's time (docs/benchmarks.md).
cuBLASLt's GELU is the tanh approximation, as portkit's bias_gelu. CUDA builds only:
hipBLASLt has the same epilogues under its own names and is not wired here.

`matmul(a, b, epilogue, bias, aux)` takes row-major torch tensors (a (M, K), b (K, N), each
contiguous or the transpose of a contiguous tensor) and returns D = a @ b (M, N): in
cuBLASLt's column-major terms D^T = b^T a^T, so the epilogue's bias runs along D's last
dimension. A plan (descriptors and the fastest of the heuristic's candidates, timed on the
shape's first call) is built once per shape and kept.
Inputs it cannot take raise Unsupported; callers fall back to torch.
"""
from __future__ import annotations

import ctypes
import functools
import os
import statistics
from typing import Optional

import torch
from torch import Tensor

import portkit

# cublasLtEpilogue_t
DEFAULT, GELU_AUX, GELU_AUX_BIAS, DGELU = 1, 160, 164, 192
# cublasLtMatmulDescAttributes_t, cublasLtMatmulPreferenceAttributes_t, cublasComputeType_t, cudaDataType
_TRANSA, _TRANSB, _EPILOGUE, _BIAS_POINTER, _AUX_POINTER, _AUX_LD = 3, 4, 7, 8, 11, 12
_PREF_MAX_WORKSPACE = 1
_COMPUTE_32F, _R_32F = 68, 0
_DTYPES = {torch.bfloat16: 14, torch.float16: 2}
_OP_N, _OP_T = 0, 1
WORKSPACE = 32 << 20  # bytes, what cuBLASLt asks for on Hopper
_ONE, _ZERO = ctypes.c_float(1.0), ctypes.c_float(0.0)
CANDIDATES, TUNE_ROUNDS, TUNE_REPEATS = 16, 3, 3  # algorithms asked of the heuristic, timed on a shape's first call


class Unsupported(RuntimeError):
    """cuBLASLt (or this binding) cannot run this matmul: the caller uses torch."""


class _Heuristic(ctypes.Structure):  # cublasLtMatmulHeuristicResult_t
    _fields_ = [("algo", ctypes.c_uint64 * 8), ("workspace", ctypes.c_size_t), ("state", ctypes.c_int),
                ("waves", ctypes.c_float), ("reserved", ctypes.c_int * 4)]


def available() -> bool:
    """Whether this torch build can use cuBLASLt here (CUDA, not ROCm, library found)."""
    if torch.version.hip is not None or torch.version.cuda is None:
        return False
    try:
        _lib()
    except (OSError, Unsupported):
        return False
    return True


@functools.lru_cache(maxsize=None)
def _lib() -> ctypes.CDLL:
    """The libcublasLt torch has loaded (found in this process's mappings), else by soname."""
    x = torch.ones(8, 8, device=portkit.device(), dtype=torch.bfloat16)
    torch.addmm(x[0], x, x)  # makes torch load cuBLASLt if it has not yet
    names = [line.split()[-1] for line in _maps() if "libcublasLt.so" in line]
    names.append(f"libcublasLt.so.{torch.version.cuda.split('.')[0]}")
    for name in dict.fromkeys(names):
        try:
            return _declare(ctypes.CDLL(name))
        except OSError:
            continue
    raise Unsupported(f"libcublasLt not found (tried {', '.join(dict.fromkeys(names))})")


def _maps() -> list[str]:
    try:
        with open(f"/proc/{os.getpid()}/maps") as f:
            return f.read().splitlines()
    except OSError:
        return []


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    p, i, u64, i64, sz = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint64, ctypes.c_int64, ctypes.c_size_t
    sigs = {"cublasLtCreate": [p], "cublasLtMatmulDescCreate": [p, i, i],
            "cublasLtMatmulDescSetAttribute": [p, i, p, sz], "cublasLtMatrixLayoutCreate": [p, i, u64, u64, i64],
            "cublasLtMatmulPreferenceCreate": [p], "cublasLtMatmulPreferenceSetAttribute": [p, i, p, sz],
            "cublasLtMatmulAlgoGetHeuristic": [p, p, p, p, p, p, p, i, p, p],
            "cublasLtMatmul": [p, p, p, p, p, p, p, p, p, p, p, p, p, p, sz, p]}
    for name, args in sigs.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, ctypes.c_int
    return lib


def _check(status: int, what: str) -> None:
    if status != 0:
        raise Unsupported(f"{what} returned cuBLAS status {status}")


def _new(create, *args) -> ctypes.c_void_p:
    h = ctypes.c_void_p()
    _check(create(ctypes.byref(h), *args), create.__name__)
    return h


def _set(desc, attr: int, value) -> None:
    _check(_lib().cublasLtMatmulDescSetAttribute(desc, attr, ctypes.byref(value), ctypes.sizeof(value)),
           f"cublasLtMatmulDescSetAttribute({attr})")


@functools.lru_cache(maxsize=None)
def _handle(device: int) -> ctypes.c_void_p:
    return _new(_lib().cublasLtCreate)


_workspaces: dict[int, Tensor] = {}


def _workspace(device: torch.device) -> Tensor:
    ws = _workspaces.get(device.index)
    if ws is None:  # made on the first plan's call, never inside a graph capture
        ws = _workspaces[device.index] = torch.empty(WORKSPACE, dtype=torch.uint8, device=device)
    return ws


def operand(t: Tensor) -> tuple[int, int, int, int]:
    """(op, rows, cols, ld) of row-major t (r, c) as cuBLASLt's column-major operand t^T:
    contiguous t is t^T stored (c, r); the transpose of a contiguous tensor is t stored
    (r, c), used transposed."""
    r, c = t.shape
    if t.stride() == (c, 1):
        return _OP_N, c, r, c
    if t.stride() == (1, r):
        return _OP_T, r, c, r
    raise Unsupported(f"operand of shape {tuple(t.shape)} and strides {t.stride()} is neither row- nor column-major")


class _Plan:
    def __init__(self, key: tuple, pointers: tuple[int, int]):
        dev, dtype, (ta, ra, ca, lda), (tb, rb, cb, ldb), m, n, epilogue = key
        lib, dt = _lib(), _DTYPES[dtype]
        self.desc = _new(lib.cublasLtMatmulDescCreate, _COMPUTE_32F, _R_32F)
        _set(self.desc, _TRANSA, ctypes.c_int32(ta))
        _set(self.desc, _TRANSB, ctypes.c_int32(tb))
        _set(self.desc, _EPILOGUE, ctypes.c_uint32(epilogue))
        if epilogue in (GELU_AUX, GELU_AUX_BIAS, DGELU):
            _set(self.desc, _AUX_LD, ctypes.c_int64(m))
        self.set_pointers(*pointers)  # the heuristic reads their alignment
        self.a = _new(lib.cublasLtMatrixLayoutCreate, dt, ra, ca, lda)
        self.b = _new(lib.cublasLtMatrixLayoutCreate, dt, rb, cb, ldb)
        self.d = _new(lib.cublasLtMatrixLayoutCreate, dt, m, n, m)
        pref = _new(lib.cublasLtMatmulPreferenceCreate)
        limit = ctypes.c_uint64(WORKSPACE)
        _check(lib.cublasLtMatmulPreferenceSetAttribute(pref, _PREF_MAX_WORKSPACE, ctypes.byref(limit),
                                                        ctypes.sizeof(limit)), "cublasLtMatmulPreferenceSetAttribute")
        results, found = (_Heuristic * CANDIDATES)(), ctypes.c_int(0)
        status = lib.cublasLtMatmulAlgoGetHeuristic(_handle(dev), self.desc, self.a, self.b, self.d, self.d, pref,
                                                    CANDIDATES, results, ctypes.byref(found))
        self.algos = [results[i] for i in range(found.value) if results[i].state == 0] if status == 0 else []
        if not self.algos:
            raise Unsupported(f"cuBLASLt has no algorithm for epilogue {epilogue} at {m}x{n} (status {status})")
        self.result = self.algos[0]

    def tune(self, launch) -> None:
        """Times every candidate on this call's operands (the heuristic's first choice can be
        far from the best) and keeps the fastest; `launch(result)` runs one."""
        self.times = fastest(self.algos, launch, portkit.backend().module)
        self.result = self.algos[min(range(len(self.times)), key=self.times.__getitem__)]

    def set_pointers(self, bias: int, aux: int) -> None:
        if bias:
            _set(self.desc, _BIAS_POINTER, ctypes.c_void_p(bias))
        if aux:
            _set(self.desc, _AUX_POINTER, ctypes.c_void_p(aux))


def fastest(candidates: list, launch, mod) -> list[float]:
    """Each candidate's time (ms for TUNE_REPEATS launches; inf where it fails to launch): the
    median of TUNE_ROUNDS rounds, a round timing every candidate in turn with no wait between
    them, so the device never idles inside a timing and a swing of clocks or of a neighbour's
    load hits one round of every candidate, not all rounds of one."""
    ok = [launch(r) == 0 for r in candidates]  # each run once: warm, and checked

    def timed(r):
        start, end = mod.Event(enable_timing=True), mod.Event(enable_timing=True)
        start.record()
        for _ in range(TUNE_REPEATS):
            launch(r)
        end.record()
        return start, end

    def elapsed(start, end) -> float:
        end.synchronize()
        return start.elapsed_time(end)
    rounds = []
    for _ in range(TUNE_ROUNDS):  # a round's timings all issued before the first is read
        events = [timed(r) if good else None for r, good in zip(candidates, ok)]
        rounds.append([elapsed(*e) if e else float("inf") for e in events])
    return [statistics.median(t) for t in zip(*rounds)]


_plans: dict[tuple, _Plan] = {}


def matmul(a: Tensor, b: Tensor, epilogue: int = DEFAULT, bias: Optional[Tensor] = None,
           aux: Optional[Tensor] = None) -> Tensor:
    """D = a @ b (M, N) with `epilogue`; `bias` (N,) is read (GELU_AUX_BIAS); `aux` (M, N)
    contiguous is written (GELU_AUX*) or read (DGELU)."""
    (M, K), N = a.shape, b.shape[1]
    dtype = a.dtype
    if dtype not in _DTYPES or b.dtype != dtype or any(t is not None and t.dtype != dtype for t in (bias, aux)):
        raise Unsupported(f"dtypes {a.dtype}, {b.dtype}: cuBLASLt epilogues here take bf16 or fp16 alike")
    if (aux is not None and (not aux.is_contiguous() or aux.shape != (M, N))) or N % 8 or K % 8:
        raise Unsupported(f"shape {M}x{K} @ {K}x{N}: N and K must be multiples of 8, aux (M, N) contiguous")
    tensors = [t for t in (a, b, bias, aux) if t is not None]
    if any(t.data_ptr() % 16 for t in tensors):
        raise Unsupported("a tensor is not 16-byte aligned")
    key = (a.device.index, dtype, operand(b), operand(a), N, M, epilogue)
    pointers = (bias.data_ptr() if bias is not None else 0, aux.data_ptr() if aux is not None else 0)
    plan, fresh = _plans.get(key), False
    if plan is None:
        if portkit.backend().module.is_current_stream_capturing():
            raise Unsupported(f"a new cuBLASLt shape ({M}x{K} @ {K}x{N}) inside a graph capture cannot be tuned")
        plan, fresh = _plans.setdefault(key, _Plan(key, pointers)), True
    else:
        plan.set_pointers(*pointers)
    d = a.new_empty(M, N)
    ws = _workspace(a.device)
    stream = portkit.backend().module.current_stream(a.device).cuda_stream

    def launch(result: _Heuristic) -> int:
        return _lib().cublasLtMatmul(_handle(a.device.index), plan.desc, ctypes.byref(_ONE), b.data_ptr(), plan.a,
                                     a.data_ptr(), plan.b, ctypes.byref(_ZERO), d.data_ptr(), plan.d, d.data_ptr(),
                                     plan.d, ctypes.byref(result.algo), ws.data_ptr(), WORKSPACE, stream)
    if fresh:
        plan.tune(launch)
    _check(launch(plan.result), "cublasLtMatmul")
    return d
