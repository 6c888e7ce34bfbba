"""`portkit bench ops`: each fused op beside its native PyTorch peer on the active device.

Bandwidth-bound ops report GB/s counting the bytes an ideal kernel reads and writes (the
same count for both sides) and their ratio to the device's copy bandwidth; the fused
linear + cross-entropy reports time and peak memory; AdamW reports GB/s at 28 bytes per
fp32 parameter (read p, g, m, v; write p, m, v). Times are medians of per-iteration
device events (wall clock on the CPU): what an eager caller sees, launch and Python cost
included. On CUDA/ROCm each side also reports `kernel_ms`, the device time of the kernels
one call runs (torch.profiler), so a host-bound op shows as ms far above kernel_ms.
`--impls triton,aten` times the op under each named implementation (registry modes).
Where Liger-Kernel is installed (and the device runs Triton), its rms_norm, layer_norm,
swiglu and fused linear + cross-entropy are timed as a second peer of the same op.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import math
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F

import portkit
import portkit.ops as ops
from portkit.ops import registry

OPS = ("rms_norm", "layer_norm", "bias_gelu", "gelu_mlp", "swiglu", "rotary", "softmax", "linear_cross_entropy",
       "adamw", "adamw_bf16_master")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass(kw_only=True)
class BenchConfig:
    ops: tuple[str, ...] = OPS
    dtype: str = "bf16"
    rows: int = 16384          # tokens (batch x sequence) of the activation ops
    hidden: int = 2048         # model width
    vocab: int = 50304         # GPT-2 vocabulary padded to a multiple of 64
    adamw_params: int = 1_300_000_000
    iters: int = 20
    warmup: int = 5
    copy_bytes: int = 1 << 30  # buffer of the copy-bandwidth measurement
    compile: bool = False      # add torch.compile'd native peers
    impls: tuple[str, ...] = ("auto",)  # registry modes portkit's side runs under ("auto": dispatch's choice)
    quick: bool = False

    def __post_init__(self):
        unknown = [o for o in self.ops if o not in OPS]
        if unknown:
            raise ValueError(f"unknown op(s) {', '.join(unknown)}; choose from {', '.join(OPS)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype {self.dtype!r} is not one of {', '.join(DTYPES)}")
        if min(self.rows, self.hidden, self.vocab, self.adamw_params, self.iters) < 1:
            raise ValueError("rows, hidden, vocab, adamw_params and iters must be positive")

    @classmethod
    def quick_sizes(cls, **kw) -> "BenchConfig":
        """Tiny sizes for a smoke run (the CPU, CI)."""
        sizes = dict(rows=256, hidden=64, vocab=512, adamw_params=100_000, iters=3, warmup=1,
                     copy_bytes=1 << 24, quick=True)
        return cls(**{**sizes, **kw})

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


# -- timing ---------------------------------------------------------------------------------
def time_ms(fn: Callable[[], Any], cfg: BenchConfig) -> float:
    """Median milliseconds of one call of `fn`."""
    for _ in range(cfg.warmup):
        fn()
    portkit.synchronize()
    if portkit.backend().device_type == "cpu":
        return _wall_ms(fn, cfg.iters)
    events = [torch.Event(enable_timing=True) for _ in range(cfg.iters + 1)]
    events[0].record()
    for e in events[1:]:
        fn()
        e.record()
    events[-1].synchronize()
    return statistics.median(a.elapsed_time(b) for a, b in zip(events, events[1:]))


def kernel_ms(fn: Callable[[], Any], cfg: BenchConfig) -> Optional[float]:
    """Device milliseconds of the kernels one call of `fn` runs (CUDA/ROCm, via torch.profiler)."""
    if portkit.backend().device_type != "cuda":
        return None
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    fn()
    portkit.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(cfg.iters):
            fn()
        portkit.synchronize()
    events = prof.events()
    host_names = {e.name for e in events if e.device_type == DeviceType.CPU}
    # device-side ranges named after host annotations (Optimizer.step#...) span kernels: skip them
    us = sum(e.time_range.elapsed_us() for e in events
             if e.device_type != DeviceType.CPU and e.name not in host_names)
    us = us or sum(e.self_device_time_total for e in events if e.device_type == DeviceType.CPU)
    return us / cfg.iters / 1e3 if us else None


def _wall_ms(fn: Callable[[], Any], iters: int) -> float:
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def peak_bytes(fn: Callable[[], Any]) -> Optional[int]:
    """Peak device memory `fn` allocates above what was allocated before; None on the CPU."""
    backend = portkit.backend()
    if backend.device_type == "cpu":
        return None
    portkit.synchronize()
    backend.reset_peak_memory()
    base = backend.memory_stats()["allocated"]
    fn()
    portkit.synchronize()
    return backend.memory_stats()["peak_allocated"] - base


def copy_bandwidth(cfg: BenchConfig) -> float:
    """GB/s of a device-to-device copy (bytes read + written)."""
    n = cfg.copy_bytes // 4
    src = torch.randn(n, device=portkit.device())
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), cfg)
    return 2 * n * 4 / ms / 1e6


# -- the bandwidth-bound ops ----------------------------------------------------------------
@dataclass
class Pair:
    """One op and its native peer over the same inputs."""
    op: str
    registry_op: str                 # whose selected implementation the report names
    shape: str
    inputs: list[Any]
    grad_of: list[int]               # inputs that get gradients in fwd+bwd
    ours: Callable
    native: Callable
    native_name: str
    bytes_fwd: int
    bytes_fwd_bwd: int


def _leaf(t: torch.Tensor, grad: bool = True) -> torch.Tensor:
    return t.detach().requires_grad_(grad)


def _rows(cfg: BenchConfig, width: int) -> torch.Tensor:
    return _leaf(torch.randn(cfg.rows, width, device=portkit.device(), dtype=cfg.torch_dtype))


def _vector(cfg: BenchConfig) -> torch.Tensor:
    return _leaf(torch.rand(cfg.hidden, device=portkit.device(), dtype=cfg.torch_dtype) + 0.5)


def _rms_norm(cfg: BenchConfig) -> Pair:
    x, w, h = _rows(cfg, cfg.hidden), _vector(cfg), cfg.hidden
    nb = x.numel() * x.element_size()
    return Pair("rms_norm", "rms_norm_fwd", f"{cfg.rows}x{h}", [x, w], [0, 1], lambda a, b: ops.rms_norm(a, b),
                lambda a, b: F.rms_norm(a, (h,), b, 1e-6), "F.rms_norm", 2 * nb, 5 * nb)


def _layer_norm(cfg: BenchConfig) -> Pair:
    x, w, b, h = _rows(cfg, cfg.hidden), _vector(cfg), _vector(cfg), cfg.hidden
    nb = x.numel() * x.element_size()
    return Pair("layer_norm", "layer_norm_fwd", f"{cfg.rows}x{h}", [x, w, b], [0, 1, 2], ops.layer_norm,
                lambda a, ww, bb: F.layer_norm(a, (h,), ww, bb), "F.layer_norm", 2 * nb, 5 * nb)


def _bias_gelu(cfg: BenchConfig) -> Pair:
    x, b = _rows(cfg, cfg.hidden), _vector(cfg)
    nb = x.numel() * x.element_size()
    return Pair("bias_gelu", "bias_gelu_fwd", f"{cfg.rows}x{cfg.hidden}", [x, b], [0, 1], ops.bias_gelu,
                lambda a, c: F.gelu(a + c, approximate="tanh"), "F.gelu(x+b, tanh)", 2 * nb, 5 * nb)


def _swiglu(cfg: BenchConfig) -> Pair:
    x, h = _rows(cfg, 2 * cfg.hidden), cfg.hidden
    nb = x.numel() * x.element_size() // 2  # bytes of the output (N x H)
    return Pair("swiglu", "swiglu_fwd", f"{cfg.rows}x{2 * h}", [x], [0], ops.swiglu,
                lambda a: F.silu(a[..., :h]) * a[..., h:], "F.silu(gate)*up", 3 * nb, 8 * nb)


def _rotate_half(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def _rotary(cfg: BenchConfig) -> Pair:
    hs = min(128, cfg.hidden)
    nh, T = cfg.hidden // hs, min(cfg.rows, 2048)
    B = max(1, cfg.rows // T)
    dev = portkit.device()
    x = _leaf(torch.randn(B, nh, T, hs, device=dev, dtype=cfg.torch_dtype))
    cos, sin = ops.rotary_tables(T, hs, device=dev)
    nb = x.numel() * x.element_size()
    return Pair("rotary", "rotary_fwd", f"{B}x{nh}x{T}x{hs}", [x, cos, sin], [0], ops.rotary,
                lambda a, c, s: _rotate_half(a, c.to(a.dtype), s.to(a.dtype)), "torch rotate-half", 2 * nb, 4 * nb)


def _softmax(cfg: BenchConfig) -> Pair:
    T = min(cfg.hidden, 2048)
    nh = max(1, cfg.rows // T)
    dev = portkit.device()
    x = _leaf(torch.randn(1, nh, T, T, device=dev, dtype=cfg.torch_dtype))
    causal = torch.ones(T, T, dtype=torch.bool, device=dev).triu(1)
    scale = 1 / math.sqrt(128)

    def native(a):
        return torch.softmax((a.float() * scale).masked_fill(causal, float("-inf")), -1).to(a.dtype)
    nb = x.numel() * x.element_size()
    return Pair("softmax", "softmax_fwd", f"1x{nh}x{T}x{T} causal", [x], [0],
                lambda a: ops.scaled_masked_softmax(a, None, scale, causal=True), native,
                "torch masked_fill+softmax (fp32)", 2 * nb, 5 * nb)


def liger_peer(op: str, cfg: BenchConfig) -> Optional[tuple[str, Callable, list, list[int]]]:
    """(name, fn, inputs, grad_of) of Liger-Kernel's op of the same work, or None where Liger
    is not installed, the device runs no Triton, or Liger has no such op."""
    try:
        import liger_kernel.transformers.functional as lk
    except ImportError:
        return None
    if portkit.backend().device_type != "cuda":  # Liger's kernels run on CUDA (and ROCm) devices
        return None
    h = cfg.hidden
    if op == "rms_norm":
        return "Liger rms_norm", lambda a, b: lk.liger_rms_norm(a, b, 1e-6), [_rows(cfg, h), _vector(cfg)], [0, 1]
    if op == "layer_norm":
        return ("Liger layer_norm", lambda a, w, b: lk.liger_layer_norm(a, w, b, 1e-5),
                [_rows(cfg, h), _vector(cfg), _vector(cfg)], [0, 1, 2])
    if op == "swiglu":  # Liger takes gate and up as two tensors (the outputs of two projections)
        return "Liger swiglu(gate, up)", lk.liger_swiglu, [_rows(cfg, h), _rows(cfg, h)], [0, 1]
    if op == "linear_cross_entropy":
        return "Liger fused_linear_cross_entropy", lk.liger_fused_linear_cross_entropy, [], []
    return None


PAIRS = {"rms_norm": _rms_norm, "layer_norm": _layer_norm, "bias_gelu": _bias_gelu, "swiglu": _swiglu,
         "rotary": _rotary, "softmax": _softmax}


def _fwd(fn: Callable, inputs: list) -> Callable[[], Any]:
    def run():
        with torch.no_grad():
            return fn(*inputs)
    return run


def _fwd_bwd(fn: Callable, inputs: list, grad_of: list[int]) -> Callable[[], Any]:
    wrt = [inputs[i] for i in grad_of]
    with torch.no_grad():
        dy = torch.randn_like(fn(*inputs))

    def run():  # autograd.grad, not backward(): no .grad accumulation traffic
        return torch.autograd.grad(fn(*inputs), wrt, dy)
    return run


def _side(name: str, fn: Callable[[], Any], nbytes: int, cfg: BenchConfig, copy_gbps: float) -> dict:
    ms = time_ms(fn, cfg)
    gbps = nbytes / ms / 1e6
    side = {"name": name, "ms": round(ms, 4), "gbps": round(gbps, 1), "copy_ratio": round(gbps / copy_gbps, 3)}
    k = kernel_ms(fn, cfg)
    if k:
        side.update(kernel_ms=round(k, 4), kernel_copy_ratio=round(nbytes / k / 1e6 / copy_gbps, 3))
    return side


@contextlib.contextmanager
def _impl_mode(impl: str):
    """Dispatch under registry mode `impl` ("auto" leaves the mode as it is)."""
    if impl == "auto":
        yield
        return
    registry.set_mode(impl)
    try:
        yield
    finally:
        registry.set_mode(None)


def _impl_name(op: str, impl: str) -> Optional[str]:
    """The implementation op dispatches to under `impl`; None when `impl` names one op lacks here."""
    with _impl_mode(impl):
        chosen = registry.choose(op)
    name = chosen.name if chosen else "reference"
    return name if impl in ("auto", name) else None


def bench_pair(p: Pair, cfg: BenchConfig, copy_gbps: float) -> list[dict]:
    rows = []
    peers = [(p.native_name, p.native, p.inputs, p.grad_of)]
    if cfg.compile:
        peers.append((f"torch.compile({p.native_name})", torch.compile(p.native), p.inputs, p.grad_of))
    liger = liger_peer(p.op, cfg)
    if liger:
        peers.append(liger)
    impls = {}  # implementation name -> the mode that selects it (each timed once)
    for mode in cfg.impls:
        name = _impl_name(p.registry_op, mode)
        if name:
            impls.setdefault(name, mode)
    for mode, nbytes, make in (("fwd", p.bytes_fwd, _fwd), ("fwd+bwd", p.bytes_fwd_bwd, _fwd_bwd)):
        natives = [_side(name, make(peer, inputs, *([grad_of] if mode == "fwd+bwd" else [])), nbytes, cfg, copy_gbps)
                   for name, peer, inputs, grad_of in peers]
        extra = [p.grad_of] if mode == "fwd+bwd" else []
        for impl_name, impl in impls.items():
            with _impl_mode(impl):
                ours = _side(f"portkit ({impl_name})", make(p.ours, p.inputs, *extra), nbytes, cfg, copy_gbps)
            rows += [_row(p.op, mode, p.shape, nbytes, ours, native) for native in natives]
    return rows


def _row(op: str, mode: str, shape: str, nbytes: Optional[int], ours: dict, native: Optional[dict],
         **extra) -> dict:
    speedup = round(native["ms"] / ours["ms"], 3) if native else None
    return {"op": op, "mode": mode, "shape": shape, "bytes": nbytes, "portkit": ours, "native": native,
            "speedup": speedup, **extra}


# -- fused linear + cross-entropy -----------------------------------------------------------
def bench_linear_cross_entropy(cfg: BenchConfig, copy_gbps: float) -> list[dict]:
    dev, n, d, v = portkit.device(), cfg.rows, cfg.hidden, cfg.vocab
    h = _leaf(torch.randn(n, d, device=dev, dtype=cfg.torch_dtype))
    w = _leaf(torch.randn(v, d, device=dev, dtype=cfg.torch_dtype) / math.sqrt(d))
    t = torch.randint(0, v, (n,), device=dev)

    def ours():
        return torch.autograd.grad(ops.linear_cross_entropy(h, w, t), (h, w))

    def native():
        return torch.autograd.grad(F.cross_entropy((h @ w.t()).float(), t), (h, w))
    peers = [("logits.float() + F.cross_entropy", native)]
    liger = liger_peer("linear_cross_entropy", cfg)
    if liger:
        peers.append((liger[0], lambda: torch.autograd.grad(liger[1](h, w, t), (h, w))))
    impl = registry.choose("linear_cross_entropy_fwd")
    ours_side = _lce_side(f"portkit ({impl.name if impl else 'reference'})", ours, cfg)
    rows = []
    for name, fn in peers:
        side = _lce_side(name, fn, cfg)
        less = (side["peak_bytes"] / max(1, ours_side["peak_bytes"])) if ours_side["peak_bytes"] else None
        rows.append(_row("linear_cross_entropy", "fwd+bwd", f"{n}x{d} @ {v}x{d}", None, ours_side, side,
                         memory_ratio=round(less, 2) if less else None))
    return rows


def _flop_side(name: str, fn: Callable[[], Any], flops: int, cfg: BenchConfig) -> dict:
    ms = time_ms(fn, cfg)
    side = {"name": name, "ms": round(ms, 4), "tflops": round(flops / ms / 1e9, 1)}
    k = kernel_ms(fn, cfg)
    if k:
        side["kernel_ms"] = round(k, 4)
    return side


def _lce_side(name: str, fn: Callable[[], Any], cfg: BenchConfig) -> dict:
    side = _flop_side(name, fn, 6 * cfg.rows * cfg.hidden * cfg.vocab, cfg)
    return {**side, "peak_bytes": peak_bytes(fn)}


# -- the GeLU MLP (matmul-bound: TFLOP/s) ---------------------------------------------------
def _composition(x, w1, b1, w2, b2):
    return F.linear(F.gelu(F.linear(x, w1, b1), approximate="tanh"), w2, b2)


def bench_gelu_mlp(cfg: BenchConfig, copy_gbps: float) -> list[dict]:
    """ops.gelu_mlp at rows x hidden -> 4 hidden -> hidden beside torch's linear + gelu + linear;
    `max_rel_error` is the largest normwise difference of the output and the five gradients."""
    dev, n, d = portkit.device(), cfg.rows, cfg.hidden
    f = 4 * d

    def weight(rows, cols):
        return _leaf(torch.randn(rows, cols, device=dev, dtype=cfg.torch_dtype) / math.sqrt(cols))
    inputs = [_rows(cfg, d), weight(f, d), _leaf(torch.randn(f, device=dev, dtype=cfg.torch_dtype) * 0.1),
              weight(d, f), _leaf(torch.randn(d, device=dev, dtype=cfg.torch_dtype) * 0.1)]
    peers = [("F.linear + F.gelu(tanh) + F.linear", _composition)]
    if cfg.compile:
        peers.append(("torch.compile(F.linear + F.gelu + F.linear)", torch.compile(_composition)))
    impl = registry.choose("gelu_mlp_fwd")
    dy = torch.randn(n, d, device=dev, dtype=cfg.torch_dtype)
    error = _max_rel_error(*(_with_grads(fn, inputs, dy) for fn in (ops.gelu_mlp, _composition)))
    rows = []
    for mode, flops, make in (("fwd", 4 * n * d * f, _fwd), ("fwd+bwd", 12 * n * d * f, _fwd_bwd)):
        extra = [[0, 1, 2, 3, 4]] if mode == "fwd+bwd" else []
        ours = _flop_side(f"portkit ({impl.name if impl else 'reference'})", make(ops.gelu_mlp, inputs, *extra), flops, cfg)
        rows += [_row("gelu_mlp", mode, f"{n}x{d} -> {f} -> {d}", None, ours,
                      _flop_side(name, make(fn, inputs, *extra), flops, cfg), max_rel_error=error)
                 for name, fn in peers]
    return rows


def _with_grads(fn: Callable, inputs: list, dy: torch.Tensor) -> list[torch.Tensor]:
    y = fn(*inputs)
    return [y, *torch.autograd.grad(y, inputs, dy)]


def _max_rel_error(ours, theirs) -> float:
    return round(max(((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12)).item()
                     for a, b in zip(ours, theirs)), 5)


# -- AdamW ----------------------------------------------------------------------------------
def _param_sizes(total: int, hidden: int) -> list[int]:
    """GPT-like tensors: matrices of 4*hidden^2 elements, each with a (hidden,) vector."""
    big = 4 * hidden * hidden
    sizes = []
    while total > 0:
        sizes.append(min(big, total))
        total -= sizes[-1]
        if total > hidden:
            sizes.append(hidden)
            total -= hidden
    return sizes


def _params(cfg: BenchConfig, dtype: torch.dtype) -> list[torch.Tensor]:
    ps = []
    for n in _param_sizes(cfg.adamw_params, cfg.hidden):
        p = torch.nn.Parameter(torch.randn(n, device=portkit.device(), dtype=dtype) * 0.02)
        p.grad = torch.randn_like(p) * 1e-3
        ps.append(p)
    return ps


def _step_side(name: str, opt: torch.optim.Optimizer, nbytes: int, cfg: BenchConfig, copy_gbps: float) -> dict:
    return _side(name, opt.step, nbytes, cfg, copy_gbps)


def bench_adamw(cfg: BenchConfig, copy_gbps: float) -> list[dict]:
    ps = _params(cfg, torch.float32)
    n, impl = sum(p.numel() for p in ps), registry.choose("adamw_step")
    ours = _step_side(f"portkit FusedAdamW ({impl.name if impl else 'reference'})",
                      ops.FusedAdamW(ps, lr=1e-4, weight_decay=0.01), 28 * n, cfg, copy_gbps)
    native = _step_side("torch.optim.AdamW(fused=True)", torch.optim.AdamW(ps, lr=1e-4, weight_decay=0.01, fused=True),
                        28 * n, cfg, copy_gbps)
    return [_row("adamw", "step", f"{n / 1e9:.3g}B fp32 params in {len(ps)} tensors", 28 * n, ours, native)]


def bench_adamw_bf16_master(cfg: BenchConfig, copy_gbps: float) -> list[dict]:
    """bf16 params with fp32 master weights: 30 bytes a parameter (no native peer keeps masters)."""
    ps = _params(cfg, torch.bfloat16)
    n, impl = sum(p.numel() for p in ps), registry.choose("adamw_step")
    opt = ops.FusedAdamW(ps, lr=1e-4, weight_decay=0.01)
    ours = _step_side(f"portkit FusedAdamW ({impl.name if impl else 'reference'})", opt, 30 * n, cfg, copy_gbps)
    return [_row("adamw_bf16_master", "step", f"{n / 1e9:.3g}B bf16 params + fp32 masters", 30 * n, ours, None)]


# -- the run --------------------------------------------------------------------------------
def run(cfg: BenchConfig, progress: Callable[[str], None] = lambda s: None) -> dict:
    progress("copy bandwidth")
    copy_gbps = copy_bandwidth(cfg)
    results = []
    for op in cfg.ops:
        progress(op)
        results += _bench_one(op, cfg, copy_gbps)
        _release()
    backend = portkit.backend()
    return {"schema": "portkit.bench.ops/1", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "command": command_line(cfg), "backend": backend.name, "device": backend.device_name(),
            "torch": torch.__version__, "triton": _triton_version(), "ops_mode": registry.mode(),
            "config": dataclasses.asdict(cfg), "copy_gbps": round(copy_gbps, 1), "results": results}


def _bench_one(op: str, cfg: BenchConfig, copy_gbps: float) -> list[dict]:
    if op in PAIRS:
        return bench_pair(PAIRS[op](cfg), cfg, copy_gbps)
    if op == "linear_cross_entropy":
        return bench_linear_cross_entropy(cfg, copy_gbps)
    if op == "gelu_mlp":
        return bench_gelu_mlp(cfg, copy_gbps)
    if op == "adamw":
        return bench_adamw(cfg, copy_gbps)
    return bench_adamw_bf16_master(cfg, copy_gbps)


def _release() -> None:
    import gc
    gc.collect()
    module = portkit.backend().module
    if hasattr(module, "empty_cache"):
        module.empty_cache()


def _triton_version() -> Optional[str]:
    import importlib.metadata
    try:
        return importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        return None


def command_line(cfg: BenchConfig) -> str:
    parts = ["portkit bench ops"]
    if cfg.quick:
        parts.append("--quick")
    parts += [f"--ops {','.join(cfg.ops)}", f"--dtype {cfg.dtype}", f"--rows {cfg.rows}", f"--hidden {cfg.hidden}",
              f"--vocab {cfg.vocab}", f"--adamw-params {cfg.adamw_params}", f"--iters {cfg.iters}"]
    if cfg.compile:
        parts.append("--compile")
    if cfg.impls != ("auto",):
        parts.append(f"--impls {','.join(cfg.impls)}")
    return " ".join(parts)


# -- presenting -------------------------------------------------------------------------------
def _gb(nbytes: Optional[int]) -> str:
    return f"{nbytes / 2**30:.2f} GiB" if nbytes is not None else "n/a"


def _note(r: dict) -> str:
    ours, native = r["portkit"], r["native"] or {}
    if r["op"] == "linear_cross_entropy":
        ratio = f" ({r['memory_ratio']}x less)" if r.get("memory_ratio") else ""
        return f"peak {_gb(ours['peak_bytes'])} vs {_gb(native['peak_bytes'])}{ratio}"
    if r["op"] == "gelu_mlp":
        kernels = f"kernels {ours['kernel_ms']:.3f} vs {native['kernel_ms']:.3f} ms; " if "kernel_ms" in ours else ""
        return f"{kernels}max rel. difference {r['max_rel_error']:.1e}"
    if "kernel_ms" in ours:
        theirs = (f" vs {native['kernel_ms']:.3f} ms ({100 * native['kernel_copy_ratio']:.0f}%)"
                  if "kernel_ms" in native else "")
        return f"kernels {ours['kernel_ms']:.3f} ms ({100 * ours['kernel_copy_ratio']:.0f}% of copy){theirs}"
    return ""


def table_rows(report: dict) -> list[list[str]]:
    """One row per result: op/portkit's implementation, mode, shape, portkit ms, GB/s, of copy,
    native, ms, GB/s, of copy, speedup, note."""
    out = []
    for r in report["results"]:
        ours, nat = r["portkit"], r["native"] or {}
        impl = ours["name"][ours["name"].rfind("(") + 1:-1] if ours["name"].endswith(")") else "-"
        out.append([f"{r['op']}/{impl}", r["mode"], r["shape"], f"{ours['ms']:.3f}", _rate(ours), _pct(ours),
                    nat.get("name", "-"), f"{nat['ms']:.3f}" if nat else "-", _rate(nat) if nat else "-",
                    _pct(nat) if nat else "-", f"{r['speedup']:.2f}x" if r["speedup"] else "-", _note(r)])
    return out


def _rate(side: dict) -> str:
    if "gbps" in side:
        return f"{side['gbps']:.0f} GB/s"
    return f"{side['tflops']:.0f} TFLOP/s" if "tflops" in side else "-"


def _pct(side: dict) -> str:
    return f"{100 * side['copy_ratio']:.0f}%" if "copy_ratio" in side else "-"


HEADER = ["op", "mode", "shape", "portkit ms", "portkit rate", "of copy", "native peer", "native ms",
          "native rate", "of copy", "speedup", "note"]


def markdown(report: dict) -> str:
    lines = [f"Device: {report['device']} ({report['backend']}), torch {report['torch']}, "
             f"triton {report['triton'] or '-'}, {report['date'][:10]}. "
             f"Copy bandwidth: {report['copy_gbps']:.0f} GB/s.",
             "", f"Command: `{report['command']}`", "",
             "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(report)]
    return "\n".join(lines) + "\n"
