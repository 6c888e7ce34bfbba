"""Every portkit Triton kernel cross-compiled on the CPU for sm_80, sm_90, gfx90a and gfx942
at the launch shapes its launcher chooses there (portkit.ops.crosscompile), no GPU needed.
The four targets compile once per test session (about a minute cold on 2 cores)."""
import json
import time

import pytest
import torch
import triton
import triton.language as tl

from portkit import cli
from portkit.ops import crosscompile as cc
from portkit.ops import builtin
from portkit.ops._op import launchable

TARGETS = list(cc.TARGETS)


@pytest.fixture(scope="session")
def results():
    start = time.perf_counter()
    found = cc.check(TARGETS)
    print(f"\ncross-compiled {len(found)} kernel launches in {time.perf_counter() - start:.1f} s")
    return found


@pytest.mark.parametrize("target", TARGETS)
def test_every_kernel_compiles_for(results, target):
    mine = [r for r in results if r.target == target]
    failed = "\n\n".join(f"{r.kernel}:\n{r.error}" for r in cc.failures(mine))
    assert not failed, f"portkit kernels that do not compile for {target}:\n{failed}"
    helpers = {"column_sum"}  # gelu_mlp's cuBLASLt path sums its bias gradients with this kernel
    assert {r.op for r in mine} == set(builtin.TABLE) | helpers, "a Triton kernel has no launch in the check"


def test_resources_and_occupancy_are_read_from_the_binaries(results):
    for r in results:
        assert r.regs > 0 and r.spills >= 0 and r.smem >= 0, r
        assert 0 < r.occupancy["warps"] <= r.occupancy["max"], r
        if r.target.startswith("gfx") and "LDS" not in r.occupancy["limit"]:
            # the formula agrees with LLVM's own figure where Triton's LDS (unknown to LLVM) does not bind
            assert r.occupancy["warps"] == r.detail["llvm_occupancy"], r


def test_wave64_launch_rules(results):
    """Widest rows: 32 warps on CUDA, 16 waves of 64 lanes on ROCm (1024 threads a block, the maximum)."""
    by = {(r.kernel, r.target): r for r in results}
    for kernel in ("rms_norm_fwd H=65536: _rms_fwd_kernel", "layer_norm_bwd H=65536: _norm_bwd_kernel",
                   "softmax_fwd Tk=32768: _softmax_fwd_kernel"):
        assert [by[kernel, t].num_warps for t in TARGETS] == [32, 32, 16, 16], kernel
    # the cross-entropy step's 16 warps fit a block on both (1024 threads on wave64)
    assert [by["cross_entropy_chunk V=50304: _ce_kernel", t].num_warps for t in TARGETS] == [16, 16, 16, 16]
    # the backward keeps 16 elements of a row per lane: half the warps on wave64
    assert [by["rms_norm_bwd H=2048: _norm_bwd_kernel", t].num_warps for t in TARGETS] == [4, 4, 2, 2]


def test_occupancy_formulas():
    assert cc.occupancy(cc.NVIDIA_90, 8, 24, 1056) == {"warps": 64, "max": 64, "percent": 100.0, "limit": "warps"}
    assert cc.occupancy(cc.NVIDIA_90, 4, 118, 5120)["warps"] == 16   # ceil(118*32, 256) = 3840 regs a warp
    assert cc.occupancy(cc.NVIDIA_80, 4, 32, 100 * 1024)["limit"] == "shared memory"
    mi300 = cc.TARGETS["gfx942"].limits
    assert cc.occupancy(mi300, 2, 120, 4096)["warps"] == 4             # 512 // 128 VGPRs
    assert cc.occupancy(mi300, 16, 16, 40 * 1024)["warps"] == 4        # one 40 KiB workgroup per 64 KiB CU
    assert cc.occupancy(mi300, 32, 16, 0) == {"warps": 0, "max": 8, "percent": 0.0,
                                              "limit": "32 warps x 64 = 2048 threads > 1024 per block"}


# -- a deliberately broken kernel: inline PTX, which only NVIDIA's assembler accepts --------
@triton.jit
def _ptx_copy_kernel(X, Y, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(X + offs, mask=offs < n, other=0.0)
    y = tl.inline_asm_elementwise("mov.b32 $0, $1;", "=r,r", [x], dtype=tl.float32, is_pure=True, pack=1)
    tl.store(Y + offs, y, mask=offs < n)


def ptx_copy(x):
    y = torch.empty_like(x)
    launchable(_ptx_copy_kernel)[(1,)](x, y, x.numel(), BLOCK=1024, num_warps=4)
    return y


def test_a_kernel_that_stops_compiling_for_a_target_fails_with_the_compilers_message():
    case = (ptx_copy, "n=1024", lambda: (torch.empty(1024, device="meta"),))
    by = {r.target: r for r in cc.check(["sm_90", "gfx942"], cases=[case])}
    assert by["sm_90"].status == "compiled"
    assert by["gfx942"].status == "failed" and cc.failures(list(by.values())) == [by["gfx942"]]
    assert "LLD failed to link hsaco" in by["gfx942"].error and "error: invalid instruction" in by["gfx942"].error


def test_dcu_targets_are_unverified_with_upstream_triton():
    rows = cc.check(["gfx928", "gfx936"])
    assert [(r.target, r.status) for r in rows] == [("gfx928", "unverified"), ("gfx936", "unverified")]
    assert "unsupported target: 'gfx928'" in rows[0].error and cc.DCU_VERIFIER in rows[0].error
    assert cc.failures(rows) == []


def test_cli_writes_the_table_and_json(results, tmp_path, capsys):
    out = tmp_path / "k.json"
    assert cli.main(["kernels", "--target", "gfx942,dcu", "--markdown", "--json-out", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("| kernel (op, shape) | gfx942 |") and "gfx928: (every kernel): unverified" in text
    data = json.loads(out.read_text())
    assert data["meta"]["triton"] == triton.__version__
    assert {r["status"] for r in data["results"]} == {"compiled", "unverified"}


def test_cli_rejects_an_unknown_target(capsys):
    assert cli.main(["kernels", "--target", "sm_90,gfx1200x"]) == 2
    assert "unknown target(s) gfx1200x; choose from sm_80" in capsys.readouterr().err


def test_conformance_group(results, fresh_runtime):
    from portkit.conformance import kernels as _conformance_kernels
    from portkit.conformance.common import Context

    class TritonDcu:  # a backend that runs Triton on a gfx928 DCU, as far as the group asks
        name = "dcu-sim"

        def capabilities(self):
            return type("Caps", (), {"triton": True})()

        def arch(self):
            return "gfx928"
    checks = _conformance_kernels.run(Context(TritonDcu(), workdir=None))
    bad = [c for c in checks if not c.ok]
    assert [c.name for c in bad] == ["(every kernel) [gfx928]"]  # its own arch cannot be compiled for
    assert "gfx936" in " ".join(c.name for c in checks if c.ok)  # other DCU archs: unverified, reported
    cpu = _conformance_kernels.run(Context(fresh_runtime.backends()["cpu"], workdir=None))
    assert [c.ok for c in cpu] == [True] and "does not run Triton" in cpu[0].reason
