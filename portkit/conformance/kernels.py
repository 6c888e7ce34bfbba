"""Conformance group `kernels`: every portkit Triton kernel compiled for the CUDA and ROCm
targets (sm_80, sm_90, gfx90a, gfx942) and for the backend's own architecture, at the
launch shapes the launchers choose there (portkit.ops.crosscompile); no device code runs.
A kernel that does not compile fails with the compiler's message. A DCU architecture that
the installed Triton cannot compile for fails when it is the device's own, else it is
reported unverified (a pass naming what would verify it)."""
from __future__ import annotations

from portkit.conformance.common import Check, Context, describe, missing


def run(ctx: Context) -> list[Check]:
    if not ctx.backend.capabilities().triton:
        return [Check("Triton kernels", True, f"backend {ctx.backend.name!r} does not run Triton: nothing to "
                                              f"compile (`portkit kernels` checks every target)")]
    try:
        from portkit.ops import crosscompile
        import triton  # noqa: F401
    except ImportError as e:
        return missing(f"triton ({describe(e)})", "triton imports")
    own = device_arch(ctx.backend)
    targets = list(dict.fromkeys([*crosscompile.check_targets(None), *([own] if own else [])]))
    return [as_check(r, own) for r in crosscompile.check(targets)]


def device_arch(backend) -> str | None:
    """gfx architecture of a ROCm/DCU device, None elsewhere (the CUDA targets are fixed)."""
    arch = getattr(backend, "arch", None)
    if not callable(arch):
        return None
    try:
        return arch() or None
    except Exception:  # a backend whose device cannot answer: its contract group says why
        return None


def as_check(r, own: str | None) -> Check:
    name = f"{r.kernel} [{r.target}]"
    if r.status == "compiled":
        occ = r.occupancy
        return Check(name, True, f"{r.regs} registers, {r.spills} spills, {r.smem} B shared/LDS, "
                                 f"occupancy {occ['warps']}/{occ['max']} ({occ['limit']})")
    if r.status == "unverified":
        return Check(name, r.target != own, r.error)
    return Check(name, False, r.error)
