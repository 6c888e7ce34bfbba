"""Cross-compile every Triton kernel portkit registers for GPUs this machine does not have.

The launchers of portkit/ops/*_triton.py are called on meta tensors while they are asked
about a target (`_triton_utils.asking`: wave64 or not, multiprocessor count) and their
launches recorded (`_op.recording`): the kernels, arguments, block sizes and num_warps are
the ones each launcher chooses for that target. Each launch is then specialised as
Triton's JIT would specialise it and compiled with `triton.compile(..., target=GPUTarget)`,
which needs no driver: a cubin for NVIDIA, an hsaco for AMD.

Per kernel and target: compiled or the compiler's error, registers, spills (scratch bytes
per thread / 4, Triton's own `n_spills`), shared memory / LDS per block, and the
occupancy the resources allow (`occupancy`, formulas and limits in `LIMITS`). Results are
cached per process. Uses triton 3.7's JIT binder (`create_function_from_signature`,
`JITFunction._pack_args`): internal API, pinned with triton in scripts/setup.sh.
"""
from __future__ import annotations

import importlib
import os
import re
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch

from portkit.ops import builtin

OK, FAILED, UNVERIFIED = "compiled", "failed", "unverified"


@dataclass(frozen=True)
class Limits:
    """Per multiprocessor (SM) or compute unit (CU): what bounds resident warps/waves."""
    warp_size: int
    max_warps: int        # resident warps per SM, or waves per SIMD on AMD
    regs: int             # 32-bit registers per SM (NVIDIA), VGPRs per SIMD lane (AMD)
    reg_granule: int      # registers per warp allocation unit (NVIDIA), VGPR granule (AMD)
    smem: int             # shared memory / LDS bytes usable per SM or CU
    sms: int              # multiprocessors of the reference part (sizes the launch grids)
    max_blocks: int = 32  # resident blocks per SM (NVIDIA)
    simds: int = 4        # SIMDs per CU (AMD)
    reserved_smem: int = 0  # shared memory the driver reserves per block


# NVIDIA: CUDA C++ Programming Guide, "Compute Capabilities" (cc 8.0 and 9.0): 64 resident warps
# and 32 blocks per SM, 64K registers per SM, 164 KB (8.0) / 228 KB (9.0) shared memory per SM,
# 1 KB reserved per block; registers are allocated per warp in units of 256 (CUDA Occupancy
# Calculator). SM counts: A100 108, H100 SXM 132.
# AMD CDNA2 gfx90a / CDNA3 gfx942: 4 SIMDs per CU, at most 8 waves per SIMD (LLVM
# llvm-calc-occupancy, GCNSubtarget), 512 unified VGPRs (arch + AGPR) per SIMD lane allocated in
# granules of 8 (LLVM AMDGPUUsage), 64 KiB LDS per CU (ROCm GPU hardware specifications).
# CU counts: MI250X one GCD 110, MI300X 304.
# DCU (gfx906-derived, an estimate: no public per-CU figures for gfx926/928/936): gfx906 limits,
# 10 waves per SIMD, 256 VGPRs, granule 4, 64 KiB LDS; 64 CUs assumed.
NVIDIA_80 = Limits(32, 64, 65536, 256, 167936, 108, reserved_smem=1024)
NVIDIA_90 = Limits(32, 64, 65536, 256, 233472, 132, reserved_smem=1024)
AMD_CDNA = Limits(64, 8, 512, 8, 65536, 0)
DCU_ESTIMATE = Limits(64, 10, 256, 4, 65536, 64)


@dataclass(frozen=True)
class Target:
    name: str
    backend: str     # cuda | hip
    arch: Any        # 80, 90 | "gfx942"
    part: str
    limits: Limits

    def gpu_target(self):
        from triton.backends.compiler import GPUTarget
        return GPUTarget(self.backend, self.arch, self.limits.warp_size)


TARGETS = {t.name: t for t in (
    Target("sm_80", "cuda", 80, "A100", NVIDIA_80),
    Target("sm_90", "cuda", 90, "H100", NVIDIA_90),
    Target("gfx90a", "hip", "gfx90a", "MI250X", Limits(**{**asdict(AMD_CDNA), "sms": 110})),
    Target("gfx942", "hip", "gfx942", "MI300X", Limits(**{**asdict(AMD_CDNA), "sms": 304})),
)}
DCU_TARGETS = {a: Target(a, "hip", a, part, DCU_ESTIMATE) for a, part in
               (("gfx906", "DCU Z100"), ("gfx926", "DCU"), ("gfx928", "DCU K100-AI"), ("gfx936", "DCU BW1000"))}
DCU_VERIFIER = "DTK's Triton (the DCU build of triton shipped with Hygon DTK)"


# -- the launches each launcher chooses ----------------------------------------------------
def _m(*shape: int, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, device="meta")


def _norm(n: int, h: int, bias: bool) -> tuple:
    return (_m(n, h), _m(h)) + ((_m(h),) if bias else ())


def _f32(*shape: int) -> torch.Tensor:
    return _m(*shape, dtype=torch.float32)


def _adamw(master: bool) -> tuple:
    """Small CPU tensors: the launch shape does not depend on the sizes, and the launcher
    builds its pointer table from real data pointers."""
    shapes = ((64, 64), (64,))
    dt = torch.bfloat16 if master else torch.float32

    def new(dtype):
        return [torch.zeros(s, dtype=dtype) for s in shapes]
    return new(dt), new(dt), new(torch.float32), new(torch.float32), new(torch.float32) if master else \
        [None] * len(shapes), 3, 1e-3, 0.9, 0.95, 1e-8, 0.1


N, H, HEADS, T, HS, V = 8192, 2048, 16, 2048, 128, 50304  # a GPT of 1.3B, 4 sequences of 2048 tokens
WIDE, TK_MAX = 65536, 32768  # the widest rows the row kernels accept (MAX_ROW, softmax MAX_TK)

# (registry op or a launcher, shape label, inputs of the launcher): bf16 activations as in training
CASES: list[tuple[str | Callable, str, Callable[[], tuple]]] = [
    *[(op, f"H={h}", args) for h in (H, WIDE) for op, args in (
        ("rms_norm_fwd", lambda h=h: (*_norm(N, h, False), 1e-6)),
        ("rms_norm_bwd", lambda h=h: (_m(N, h), *_norm(N, h, False), _f32(N))),
        ("layer_norm_fwd", lambda h=h: (*_norm(N, h, True), 1e-5)),
        ("layer_norm_bwd", lambda h=h: (_m(N, h), *_norm(N, h, True), _f32(N), _f32(N))),
        ("add_rms_norm_fwd", lambda h=h: (_m(N, h), _m(N, h), _norm(N, h, False)[1], 1e-6)),
        ("add_layer_norm_fwd", lambda h=h: (_m(N, h), _m(N, h), *_norm(N, h, True)[1:], 1e-5)),
        ("rms_norm_bwd_add", lambda h=h: (_m(N, h), *_norm(N, h, False), _f32(N), _m(N, h))),
        ("layer_norm_bwd_add", lambda h=h: (_m(N, h), *_norm(N, h, True), _f32(N), _f32(N), _m(N, h))))],
    ("bias_gelu_fwd", f"H={4 * H}", lambda: (_m(N, 4 * H), _m(4 * H))),
    ("bias_gelu_bwd", f"H={4 * H}", lambda: (_m(N, 4 * H), _m(N, 4 * H), _m(4 * H))),
    ("swiglu_fwd", f"H={4 * H}", lambda: (_m(N, 8 * H),)),
    ("swiglu_bwd", f"H={4 * H}", lambda: (_m(N, 4 * H), _m(N, 8 * H))),
    ("rotary_fwd", f"T={T} hs={HS}", lambda: (_m(4, HEADS, T, HS), _f32(T, HS // 2), _f32(T, HS // 2))),
    ("rotary_bwd", f"T={T} hs={HS}", lambda: (_m(4, HEADS, T, HS), _f32(T, HS // 2), _f32(T, HS // 2))),
    *[(op, f"Tk={tk}", args) for tk in (T, TK_MAX) for op, args in (
        ("softmax_fwd", lambda tk=tk: (_m(1, HEADS, 4, tk), _m(1, 1, 4, tk, dtype=torch.bool), 0.088, True)),
        ("softmax_bwd", lambda tk=tk: (_m(1, HEADS, 4, tk), _m(1, HEADS, 4, tk), 0.088)))],
    ("cross_entropy_chunk", f"V={V}", lambda: (_m(1024, V), _m(1024, dtype=torch.int64), -100, _f32())),
    ("linear_cross_entropy_fwd", f"V={V}", lambda: (_m(N, H), _m(V, H), _m(N, dtype=torch.int64), None, -100,
                                                    _f32())),
    # gelu_mlp's cuBLASLt backward sums its bias gradients with this kernel
    (builtin.LazyKernel("reduce_triton", "column_sum"), f"F={4 * H}", lambda: (_m(N, 4 * H),)),
    ("adamw_step", "fp32", lambda: _adamw(False)),
    ("adamw_step", "bf16+fp32 master", lambda: _adamw(True)),
]


@dataclass
class Launch:
    op: str
    shape: str
    kernel: Any                   # the triton.JITFunction
    args: tuple
    kwargs: dict

    @property
    def name(self) -> str:
        return f"{self.op} {self.shape}: {self.kernel.fn.__name__}"


def launcher(op: str | Callable) -> Callable:
    """The Triton launcher the op plugin registers for a registry op (or `op` itself, a launcher)."""
    if callable(op):
        return op
    module, function = builtin.TABLE[op]
    return getattr(importlib.import_module(f"portkit.ops.{module}"), function)


class _Recorder:
    def __init__(self, op: str, shape: str, kernel, into: list[Launch]):
        self.op, self.shape, self.kernel, self.into = op, shape, kernel, into

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.into.append(Launch(self.op, self.shape, self.kernel, args, kwargs))


def launches(target: Target, cases=None) -> list[Launch]:
    """Every kernel launch the launchers choose for `target` on the CASES (one per kernel
    and shape: a launcher that launches the same kernel twice is recorded once)."""
    from portkit.ops._op import recording
    from portkit.ops._triton_utils import Asked, asking
    found: list[Launch] = []
    for op, shape, make in cases or CASES:
        fn = launcher(op)
        op = op if isinstance(op, str) else op.__name__
        with asking(Asked(hip=target.backend == "hip", sms=target.limits.sms)), \
                recording(lambda k, op=op, shape=shape: _Recorder(op, shape, k, found)):
            fn(*make())
    unique: dict[str, Launch] = {}
    for launch in found:
        unique.setdefault(launch.name, launch)
    return list(unique.values())


# -- compiling one launch ------------------------------------------------------------------
@dataclass
class Result:
    kernel: str                  # "op shape: kernel function"
    target: str
    status: str                  # compiled | failed | unverified
    error: str = ""
    num_warps: int = 0
    regs: int | None = None      # per thread (NVIDIA) / VGPRs incl. AGPRs per lane (AMD)
    spills: int | None = None    # scratch bytes per thread / 4, as Triton's kernel.n_spills
    smem: int | None = None      # shared memory / LDS bytes per block
    occupancy: dict = field(default_factory=dict)
    detail: dict = field(default_factory=dict)
    op: str = ""                 # the registry op whose launcher launched it


_cache: dict[tuple, Result] = {}


def compile_launch(launch: Launch, target: Target) -> Result:
    """Compile `launch` for `target` as Triton's JIT would at that launch (cached)."""
    src, options = _specialise(launch, target)
    key = (launch.name, target.name, repr(sorted(src.constants.items())), repr(src.attrs), repr(options))
    if key not in _cache:
        _cache[key] = _compile(launch.name, src, options, target)
        _cache[key].op = launch.op
    return _cache[key]


def _specialise(launch: Launch, target: Target):
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature
    kernel, kwargs = launch.kernel, {**launch.kwargs, "debug": False, "instrumentation_mode": ""}
    backend = make_backend(target.gpu_target())
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, options = binder(*launch.args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, specialization, options)
    return ASTSource(kernel, signature, constexprs, attrs), options.__dict__


def _compile(name: str, src, options: dict, target: Target) -> Result:
    import triton
    warps = options.get("num_warps", 4)
    try:
        with _stderr_to_text() as err:
            compiled = triton.compile(src, target=target.gpu_target(), options=options)
    except Exception as e:  # the compiler's own message is the result
        return Result(name, target.name, FAILED, compiler_message(e, err.text), warps)
    res = (_nvidia if target.backend == "cuda" else _amd)(compiled)
    occ = occupancy(target.limits, warps, res["regs"], res["smem"])
    return Result(name, target.name, OK, "", warps, res["regs"], res["spills"], res["smem"], occ, res["detail"])


class _stderr_to_text:
    """Collects what the compiler's C++ passes print on file descriptor 2 (MLIR diagnostics)."""

    def __enter__(self):
        self.text, self._file = "", tempfile.TemporaryFile(mode="w+")
        self._saved = os.dup(2)
        os.dup2(self._file.fileno(), 2)
        return self

    def __exit__(self, *exc):
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._file.seek(0)
        self.text = self._file.read()
        self._file.close()


def compiler_message(e: Exception, stderr: str) -> str:
    """The exception plus the compiler's `error:` lines (MLIR prints them, not the exception)."""
    errors = [ln.strip() for ln in stderr.splitlines() if re.search(r"\berror\b", ln)][:6]
    head = f"{type(e).__name__}: {str(e).strip()}"
    return "\n".join([head[:1500], *errors])


def _nvidia(compiled) -> dict:
    """Registers, scratch and static shared memory from the cubin (cuobjdump, shipped with triton)."""
    from triton import knobs
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        out = subprocess.run([knobs.nvidia.cuobjdump.path, "--dump-resource-usage", f.name],
                             capture_output=True, text=True, check=True).stdout
    usage = {k: int(v) for k, v in re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", out)}
    scratch = usage["STACK"] + usage["LOCAL"]
    return {"regs": usage["REG"], "spills": scratch // 4, "smem": compiled.metadata.shared + usage["SHARED"],
            "detail": {"scratch_bytes": scratch, "static_shared": usage["SHARED"]}}


def _amd(compiled) -> dict:
    """VGPRs, scratch, LDS and LLVM's own occupancy from the code object's assembly listing."""
    text = compiled.asm["amdgcn"]

    def num(pattern: str) -> int:
        m = re.search(pattern, text)
        return int(m.group(1)) if m else 0
    vgprs = num(r"; TotalNumVgprs: (\d+)") or num(r"; NumVgprs: (\d+)")
    scratch = num(r"\.private_segment_fixed_size:\s+(\d+)")
    lds = compiled.metadata.shared + num(r"\.group_segment_fixed_size:\s+(\d+)")
    return {"regs": vgprs, "spills": scratch // 4, "smem": lds,
            "detail": {"scratch_bytes": scratch, "vgpr_spills": num(r"\.vgpr_spill_count:\s+(\d+)"),
                       "sgpr_spills": num(r"\.sgpr_spill_count:\s+(\d+)"), "sgprs": num(r"\.sgpr_count:\s+(\d+)"),
                       "llvm_occupancy": num(r"; Occupancy: (\d+)")}}


def _ceil(a: int, b: int) -> int:
    return -(-a // b) * b


def occupancy(lim: Limits, warps: int, regs: int, smem: int) -> dict:
    """Resident warps per SM (NVIDIA) or waves per SIMD (AMD), and what limits them.

    NVIDIA, per SM: blocks = min(max_blocks, max_warps // W, (regs_SM // ceil(regs*32, 256)) // W,
    smem_SM // (smem + 1 KB reserved)); warps = blocks * W; occupancy = warps / 64.
    AMD, per SIMD: waves = min(max_waves, VGPRs // ceil(vgprs, granule),
    (LDS_CU // lds) * W / 4 SIMDs); occupancy = waves / max_waves. A block wider than 1024
    threads cannot launch (0). Estimates from resources: the hardware schedulers decide.
    """
    if warps * lim.warp_size > 1024:
        return {"warps": 0, "max": lim.max_warps, "percent": 0.0,
                "limit": f"{warps} warps x {lim.warp_size} = {warps * lim.warp_size} threads > 1024 per block"}
    per_block = smem + lim.reserved_smem
    if lim.warp_size == 32:
        by = {"warps": lim.max_warps // warps * warps, "blocks": lim.max_blocks * warps,
              "registers": lim.regs // _ceil(max(regs, 1) * 32, lim.reg_granule) // warps * warps,
              "shared memory": lim.smem // per_block * warps if per_block else 10**9}
    else:
        by = {"waves": lim.max_warps, "registers": lim.regs // _ceil(max(regs, 1), lim.reg_granule),
              "LDS": (lim.smem // per_block) * warps // lim.simds if per_block else 10**9}
    active = min(by.values())
    limit = ", ".join(k for k, v in by.items() if v == active)
    return {"warps": active, "max": lim.max_warps, "percent": round(100.0 * active / lim.max_warps, 1), "limit": limit}


# -- the whole check -----------------------------------------------------------------------
def target(name: str) -> Target:
    """A known target, or an AMD one named by its gfx architecture (CDNA limits assumed)."""
    found = TARGETS.get(name) or DCU_TARGETS.get(name)
    if found is None and name.startswith("gfx"):
        found = Target(name, "hip", name, "AMD GPU", Limits(**{**asdict(AMD_CDNA), "sms": 64}))
    if found is None:
        raise ValueError(f"unknown target {name!r}; known: {', '.join([*TARGETS, *DCU_TARGETS])}")
    return found


def check(targets: list[str] | None = None, cases=None) -> list[Result]:
    """One Result per kernel launch and target; DCU targets upstream Triton cannot compile
    for come back as one `unverified` row each."""
    from portkit.ops._triton_utils import interpreting
    if interpreting():
        raise RuntimeError("the cross-compile check needs Triton's compiler, and TRITON_INTERPRET=1 replaces it "
                           "with the interpreter; unset TRITON_INTERPRET")
    results = []
    for name in targets or list(TARGETS):
        target_ = target(name)
        reason = dcu_unsupported(target_) if name in DCU_TARGETS else None
        if reason:
            results.append(Result("(every kernel)", name, UNVERIFIED, reason))
            continue
        results += [compile_launch(launch, target_) for launch in launches(target_, cases)]
    return results


def check_targets(text: str | None, dcu: bool = True) -> list[str]:
    """--target values (comma-separated, 'all' or 'dcu') -> target names; ValueError when unknown."""
    known = [*TARGETS, *DCU_TARGETS]
    if not text or text == "all":
        return known if dcu else list(TARGETS)
    chosen = [t.strip() for t in text.split(",") if t.strip()]
    chosen = [d for t in chosen for d in (DCU_TARGETS if t == "dcu" else [t])]
    unknown = [t for t in chosen if t not in known]
    if unknown:
        raise ValueError(f"--target: unknown target(s) {', '.join(unknown)}; choose from {', '.join(known)}, dcu, all")
    return chosen


_probe_cache: dict[str, str | None] = {}


def dcu_unsupported(target: Target) -> str | None:
    """None when the installed Triton compiles a one-line kernel for the DCU arch, else why
    the arch stays unverified and what would verify it."""
    if target.name not in _probe_cache:
        import triton
        from triton.compiler import ASTSource
        result = _compile(target.name, ASTSource(_probe_kernel(), {"X": "*fp32"}, {}), {"num_warps": 4}, target)
        first = next((ln.split("error: ", 1)[1] for ln in result.error.splitlines() if "error: " in ln),
                     result.error.split("\n")[0])
        _probe_cache[target.name] = None if result.status == OK else (
            f"unverified: triton {triton.__version__} (upstream) cannot compile for {target.name} "
            f"({first[:160]}); verify with {DCU_VERIFIER}: `portkit kernels --target {target.name}`")
    return _probe_cache[target.name]


def _probe_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def _dcu_probe(X):
        tl.store(X, 1.0)
    return _dcu_probe


def failures(results: list[Result]) -> list[Result]:
    return [r for r in results if r.status == FAILED]


def as_dicts(results: list[Result]) -> list[dict]:
    return [asdict(r) for r in results]
